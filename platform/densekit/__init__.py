"""densekit: train, distil and index dense retrievers on Ray.

Only the version lives here: importing densekit must stay cheap (no torch, no Ray), because
`densekit --help` and every Ray worker import it.
"""

__version__ = "0.1.0"
