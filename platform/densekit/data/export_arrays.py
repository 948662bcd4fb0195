"""`densekit export format=npy | faiss`: embeddings and indexes for tools that know no densekit.

- npy: an embeddings table (encode's output) -> `embeddings.npy` (float32, [N, D], rows in the
  table's order, written through a memory map: bounded memory) + `ids.txt` (row i's id on line i).
- faiss: a sharded index (index's output) -> one `index.faiss` holding every shard's vectors in
  shard order + `ids.txt` (FAISS label i's id on line i). Flat and IVF shards share their trained
  quantizer and merge as they are (`merge_from`): search results equal the sharded search's;
  graph indexes (HNSW) are rebuilt from their vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from densekit.artifacts import read_manifest, write_marker
from densekit.errors import InputError

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.txt"


def export_npy(src: Path, tmp: Path) -> int:
    """Write the embeddings table `src` as a folder `tmp` (embeddings.npy, ids.txt); returns rows."""
    from densekit.pipelines.embeddings import iter_embeddings, read_embeddings_manifest

    manifest = read_embeddings_manifest(src)
    n, dim = int(manifest.get("rows", 0)), int(manifest["dim"])
    tmp.mkdir()
    write_marker(tmp, "export")
    array = np.lib.format.open_memmap(tmp / EMBEDDINGS_FILE, mode="w+", dtype=np.float32, shape=(n, dim))
    row = 0
    with open(tmp / IDS_FILE, "w", encoding="utf-8") as ids:
        for batch_ids, vectors in iter_embeddings(src):
            if row + len(vectors) > n:
                raise InputError(src, None, f"holds more rows than its manifest's {n}")
            array[row : row + len(vectors)] = vectors
            ids.writelines(f"{i}\n" for i in batch_ids)
            row += len(vectors)
    array.flush()
    del array
    if row != n:
        raise InputError(src, None, f"holds {row} rows, its manifest says {n}")
    return n


def export_faiss(src: Path, tmp: Path) -> int:
    """Merge the shards of the index folder `src` into `tmp` (index.faiss, ids.txt); returns ntotal."""
    import faiss

    from densekit.pipelines.index import load_shard, shard_ids

    manifest = read_manifest(src)
    if manifest.get("step") != "index" or not isinstance(manifest.get("shards"), list):
        raise InputError(src, None, "not an index folder (its manifest lists no shards); expected "
                         "the output of densekit index")
    tmp.mkdir()
    write_marker(tmp, "export")
    merged = None
    with open(tmp / IDS_FILE, "w", encoding="utf-8") as ids:
        for shard in manifest["shards"]:
            d = src / shard["dir"]
            index = load_shard(d, manifest.get("factory", ""), mmap=False)
            if merged is None:
                merged = index
            else:
                _merge(merged, index)
            ids.writelines(f"{i}\n" for i in shard_ids(d).to_pylist())
    if merged is None:
        raise InputError(src, None, "has no shards")
    if merged.ntotal != manifest.get("ntotal", merged.ntotal):
        raise InputError(src, None, f"shards hold {merged.ntotal} vectors, its manifest says {manifest['ntotal']}")
    faiss.write_index(merged, str(tmp / INDEX_FILE))
    return int(merged.ntotal)


def _merge(merged, index) -> None:
    """Append `index`'s vectors to `merged`, labelled after merged's (label = global row)."""
    import faiss

    # IVF lists store labels (each shard's from 0: shift them); flat codes are labelled by position.
    shift = merged.ntotal if faiss.try_extract_index_ivf(merged) is not None else 0
    try:
        merged.merge_from(index, shift)
    except RuntimeError:  # no merge for this type (HNSW): add its vectors again
        merged.add(index.reconstruct_n(0, index.ntotal))
