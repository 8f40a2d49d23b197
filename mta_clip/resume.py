"""Exact resume: ``--resume`` continues the interrupted run, batch for batch.

Detectron2 replays the data from iteration 0 after a resume and restarts every random stream. Here:

* ``ResumableTrainLoader``: batch ``b`` of rank ``r`` is a pure function of ``(seed, b, r)``: the
  image order is an epoch-wise permutation drawn from ``seed``, and the augmentation of the image at
  stream position ``g`` runs with every random generator seeded from ``(seed, g)`` (the global
  generators are restored afterwards). Workers produce whole batches in turn, so the order does not
  depend on ``DATALOADER.NUM_WORKERS``. The seed is saved in the checkpoint; after a resume the
  loader starts at batch ``start_iter``. Batches are consecutive stream items (no aspect-ratio
  grouping: the semantic recipes crop to one size); set ``DATALOADER.EXACT_RESUME False`` for
  Detectron2's loader.
* ``RNGStates``: the global torch / numpy / Python generators (what the model uses, e.g. point
  sampling) are saved in every checkpoint and restored by ``--resume``.
* ``trim_metrics``: rows of ``metrics.json`` written after the checkpoint by the killed run go.
* ``check_resume_config``: a resume with another config is refused before anything is written.

Multi-process runs: the batches of every rank are exact as well; the model-side generators are
those of rank 0 only, so the other ranks restart theirs and losses agree only approximately.
"""

import copy
import itertools
import json
import logging
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import yaml
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = [
    "RESUMABLE_KEYS",
    "RNGStates",
    "ResumableBatchStream",
    "build_resumable_train_loader",
    "check_resume_config",
    "config_differences",
    "trim_metrics",
]

logger = logging.getLogger(__name__)

# Keys a resumed run may change: they do not change what the run computes up to its end.
RESUMABLE_KEYS = {
    "SOLVER.MAX_ITER",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "DATALOADER.NUM_WORKERS",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "OUTPUT_DIR",
    "VIS_PERIOD",
}


def _seed(*numbers: int) -> int:
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class ResumableBatchStream(IterableDataset):
    """Infinite stream of batches (lists of mapped dataset dicts), see the module docstring."""

    def __init__(self, dataset: List[Dict], mapper, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if not dataset:
            raise ValueError("the training set is empty")
        self.dataset = dataset
        self.mapper = mapper
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_batch = 0
        self._perms: Dict[int, np.ndarray] = {}

    def index(self, position: int) -> int:
        """Dataset index at global stream position ``position``."""
        n = len(self.dataset)
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng(_seed(self.seed, 0, epoch)).permutation(n)
        return int(self._perms[epoch][offset])

    def item(self, position: int) -> Dict:
        """The mapped dict at stream position ``position``; the global generators are left as found."""
        seed = _seed(self.seed, 1, position)
        record = copy.deepcopy(self.dataset[self.index(position)])
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            try:
                np.random.seed(seed)
                random.seed(seed)
                torch.random.default_generator.manual_seed(seed)
                out = self.mapper(record)
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
        if out is None:
            raise ValueError(f"the training mapper returned nothing for {record.get('file_name')}")
        return out

    def batch(self, b: int) -> List[Dict]:
        first = (b * self.world_size + self.rank) * self.batch_size
        return [self.item(first + j) for j in range(self.batch_size)]

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in itertools.count(self.start_batch):
            if b % workers == worker:
                yield self.batch(b)

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self._perms.clear()


def _identity(batch):
    return batch


def build_resumable_train_loader(cfg, mapper) -> DataLoader:
    """The training loader of ``DATALOADER.EXACT_RESUME``; its ``.dataset`` is the batch stream
    (set ``.dataset.start_batch`` before the first batch is read)."""
    from detectron2.data import get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} must be divisible by the number of processes ({world})")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    stream = ResumableBatchStream(dicts, mapper, total // world, seed, comm.get_rank(), world)
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        generator=torch.Generator().manual_seed(_seed(seed, 2)),  # leaves the global generator alone
        prefetch_factor=2 if workers > 0 else None,
    )


class RNGStates:
    """Checkpointable state of the global torch (CPU and CUDA), numpy and Python generators."""

    def state_dict(self) -> Dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "world_size": comm.get_world_size(),
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if comm.get_world_size() > 1 or state.get("world_size", 1) > 1:
            logger.info("Multi-process run: model-side random generators are not restored (only rank 0's are saved)")
            return
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def trim_metrics(output_dir: str, start_iter: int) -> int:
    """Drops the rows of ``<output_dir>/metrics.json`` from iteration ``start_iter`` on (written by a
    run that was killed after its last checkpoint), in place, so that a writer already holding the
    file open for appending keeps working. Returns the number of rows dropped."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return 0
    with open(path, "r+b") as f:
        lines = f.readlines()
        offset, cut = 0, None
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:  # a half-written last line of the killed run
                row = {"iteration": start_iter}
            if isinstance(row, dict) and row.get("iteration", -1) >= start_iter:
                cut = i
                break
            offset += len(line)
        if cut is None:
            return 0
        f.truncate(offset)
    return len(lines) - cut


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(node) if isinstance(node, (list, tuple)) else node}


def config_differences(saved_yaml: str, cfg) -> Dict[str, tuple]:
    """``{key: (saved value, new value)}`` for keys outside ``RESUMABLE_KEYS`` that differ. Keys the
    saved config does not have (added by a later version of this project) are not compared."""
    old = _flatten(yaml.safe_load(saved_yaml) or {})
    new = _flatten(yaml.safe_load(cfg.dump()))
    return {
        k: (old[k], new.get(k, "<absent>"))
        for k in sorted(old)
        if k not in RESUMABLE_KEYS and old[k] != new.get(k, "<absent>")
    }


def check_resume_config(cfg) -> Optional[str]:
    """Before a ``--resume`` writes anything: when ``OUTPUT_DIR`` has a checkpoint and the run's
    ``config.yaml``, the config must equal it except ``RESUMABLE_KEYS`` (ValueError listing the
    keys that differ). Returns the path of the saved config, if any."""
    out = cfg.OUTPUT_DIR
    saved = os.path.join(out, "config.yaml")
    if not (os.path.isfile(os.path.join(out, "last_checkpoint")) and os.path.isfile(saved)):
        return None
    with open(saved, "r", encoding="utf-8") as f:
        diffs = config_differences(f.read(), cfg)
    if diffs:
        lines = "\n".join(f"  {k}: {old!r} in the run, {new!r} now" for k, (old, new) in diffs.items())
        raise ValueError(
            f"--resume: the config differs from the run's {saved} in {len(diffs)} key(s):\n{lines}\n"
            f"Resume with the run's config, or start a new run in another OUTPUT_DIR (only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change on resume)."
        )
    return saved
