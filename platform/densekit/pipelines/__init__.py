"""The retrieval steps: encode, index, search, evaluate, mine, score (one module per verb).

Importing this package is cheap: each module imports Ray, torch and FAISS itself.
"""
