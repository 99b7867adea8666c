"""The Detectron2 checkpointer of this project: reads released files, strict by default."""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

from .atomic import (
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    checkpoint_problem,
    list_checkpoints,
    remove_stale_temp_files,
)

from .convert import (
    CheckpointError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    convert_official_classification,
    load_official_file,
    load_pickled_file,
    released_state_dict,
)
from .convert_mmdet import convert_mmdet_detector, is_mmdet_detector
from .convert_mmseg import convert_mmseg_upernet, is_mmseg_upernet
from .download import CheckpointDownloadError, discard, fetch_checkpoint, is_url

__all__ = ["PlainMambaCheckpointer"]


class PlainMambaCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads released checkpoints and is strict.

    A file with the released layout (a ``state_dict`` entry) is converted on the fly: an
    MMSegmentation UperNet (``decode_head.*`` keys) with :func:`convert_mmseg_upernet`, an
    MMDetection Mask R-CNN / RetinaNet file (``neck.*``, ``rpn_head.*``, ``roi_head.*`` or
    ``bbox_head.*`` keys) with :func:`convert_mmdet_detector`, anything else as a classification
    file. A classification checkpoint loaded into a detector or segmentor initialises its trunk
    only. With ``strict=True`` (default) any missing, unexpected or wrongly shaped key raises
    :class:`CheckpointError` instead of a logged warning.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        strict: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        # Files are unpickled so that they cannot run code (see safe_pickle); trusted=True lifts
        # that for files that need arbitrary classes, with a warning on every load.
        self.trusted = trusted

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load ``path`` (a file or an ``http(s)://`` URL, downloaded once into the cache).

        A downloaded file that turns out unreadable or unsafe is removed from the cache, so that
        a damaged download is never reused.
        """
        if not path or not is_url(path):
            return super().load(path, checkpointables=checkpointables)
        local = fetch_checkpoint(path)
        try:
            return super().load(local, checkpointables=checkpointables)
        except (UnreadableCheckpointError, UnsafeCheckpointError) as err:
            discard(path, local)
            raise CheckpointDownloadError(f"{path}: {err}; removed from the cache") from None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        # Detectron2 reads .pkl with a plain pickle.load and .pyth with torch.load; both go
        # through the restricted loader here. Other files reach _torch_load below.
        if filename.endswith(".pkl"):
            data = load_pickled_file(filename, "pickle", trusted=self.trusted)
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename}: expected a dict, found {type(data).__name__}")
            if "model" in data and "__author__" in data:  # Detectron2 model zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            # Caffe2 / Detectron1 model zoo: detection files keep the weights under "blobs".
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = load_official_file(filename, trusted=self.trusted)
            if "model_state" not in data:
                raise CheckpointError(f"{filename}: a pycls .pyth file needs 'model_state'")
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        data = load_official_file(f, trusted=self.trusted)
        if "model" not in data and "state_dict" in data:
            state, _ = released_state_dict(data, f)
            if is_mmseg_upernet(state):
                model = convert_mmseg_upernet(data, source=f)
            elif is_mmdet_detector(state):
                model = convert_mmdet_detector(data, source=f)
            else:
                model = convert_official_classification(data, source=f)
            return {"model": model, "__author__": f}
        return data

    def _trunk_prefix(self) -> Optional[str]:
        """Where a detector or segmentor keeps its PlainMamba trunk, e.g. ``backbone.``.

        ``None`` for a classifier: its trunk and head sit where a classification checkpoint has
        them, so there is nothing to re-key.
        """
        keys = self.model.state_dict()
        for key in keys:
            if key.endswith("pos_embed") and key != "backbone.pos_embed":
                return key[: -len("pos_embed")]
        # A segmentor keeps its trunk at ``backbone.`` like a classifier, but has no ``head.``.
        if "backbone.pos_embed" in keys and not any(k.startswith("head.") for k in keys):
            return "backbone."
        return None

    def _as_backbone_init(self, checkpoint: Dict[str, Any]) -> Optional[str]:
        """Re-key an ImageNet classifier checkpoint onto a downstream model's trunk, in place.

        Returns the trunk prefix when it did so. Only the trunk is initialised: the classifier's
        head and final norm are dropped, the downstream parts keep their fresh initialisation.
        """
        prefix = self._trunk_prefix()
        state = checkpoint.get("model", {})
        if prefix is None or "backbone.pos_embed" not in state:
            return None
        if prefix == "backbone.":
            # Same trunk prefix: only a file with a classifier head is a backbone init.
            if not any(k.startswith("head.") for k in state):
                return None
        elif any(k.startswith(prefix) for k in state):
            return None
        model_keys = set(self.model.state_dict())
        mapped, dropped = {}, []
        for key, value in state.items():
            target = prefix + key[len("backbone.") :] if key.startswith("backbone.") else None
            if target in model_keys:
                mapped[target] = value
            else:
                dropped.append(key)
        self.logger.info(
            f"Initialising the trunk ({prefix}*) from a classification checkpoint: "
            f"{len(mapped)} tensors; not used: {sorted(dropped)[:8]}"
            + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
        )
        checkpoint["model"] = mapped
        return prefix

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        trunk_prefix = self._as_backbone_init(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if trunk_prefix is not None:
            # Backbone initialisation: everything outside the trunk is new by design, so only
            # the trunk has to be complete. The segmentation taps' norm_layer{i} do not exist in
            # a classifier; the released UperNets start them fresh too.
            taps = trunk_prefix + "norm_layer"
            fresh = [k for k in incompatible.missing_keys if k.startswith(taps)]
            if fresh:
                self.logger.info(f"Trunk keys not in the classification checkpoint: {fresh}")
            incompatible.missing_keys[:] = [
                k
                for k in incompatible.missing_keys
                if k.startswith(trunk_prefix) and not k.startswith(taps)
            ]
        if self.strict:
            problems = []
            for k, got, want in incompatible.incorrect_shapes:
                problems.append(f"  shape mismatch {k}: checkpoint {got}, model {want}")
            if incompatible.missing_keys:
                problems.append(f"  missing in checkpoint: {incompatible.missing_keys[:8]}")
            if incompatible.unexpected_keys:
                problems.append(f"  not in model: {incompatible.unexpected_keys[:8]}")
            if problems:
                raise CheckpointError("checkpoint does not fit the model:\n" + "\n".join(problems))
        return incompatible

    # ---- saving and resuming: crash-safe files (see plainmamba/checkpoint/atomic.py) ----------

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` atomically, then name it in ``last_checkpoint``.

        A process killed at any moment leaves the previous file and tag as they were, plus at
        most a hidden temporary file that the next resume deletes.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # a path-manager URL: no local rename to make it atomic
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a folder")
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Name the newest complete checkpoint in ``last_checkpoint`` (atomically)."""
        if "://" in self.save_dir:
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def find_resume_checkpoint(self) -> str:
        """The file ``--resume`` continues from; ``""`` when ``save_dir`` has no ``last_checkpoint``.

        That is the file ``last_checkpoint`` names, or, if it is missing, empty or truncated,
        the most recently written readable ``*.pth`` of ``save_dir`` (with a warning). Raises
        :class:`CheckpointError` saying what to do when no checkpoint there is readable.
        """
        if not self.has_checkpoint():
            return ""
        tagged = self.get_checkpoint_file()
        problem = checkpoint_problem(tagged) if tagged else "last_checkpoint cannot be read"
        if problem is None:
            return tagged
        others = [p for _, p in list_checkpoints(self.save_dir)]
        final = os.path.join(self.save_dir, "model_final.pth")
        others += [final] if os.path.isfile(final) else []
        # Newest first: the order they were written in, which is the order of training.
        others.sort(key=lambda p: os.path.getmtime(p), reverse=True)
        skipped = []
        for path in others:
            if path == tagged:
                continue
            other_problem = checkpoint_problem(path)
            if other_problem is None:
                self.logger.warning(
                    f"last_checkpoint names {tagged}, but {problem}: resuming from {path}, the "
                    f"newest readable checkpoint, instead"
                    + (f" (also unusable: {', '.join(skipped)})" if skipped else "")
                )
                return path
            skipped.append(f"{os.path.basename(path)}: {other_problem}")
        raise CheckpointError(
            f"cannot resume from {self.save_dir}: last_checkpoint names {tagged}, but {problem}, "
            f"and no other checkpoint there is readable"
            + (f" ({'; '.join(skipped)})" if skipped else "")
            + ". To start this run again from scratch, delete "
            f"{os.path.join(self.save_dir, 'last_checkpoint')}; to start from a copy of the "
            "weights elsewhere, run without --resume and with train.init_checkpoint=PATH"
        )

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Detectron2's ``resume_or_load``, resuming from :meth:`find_resume_checkpoint`.

        Also deletes the temporary files of interrupted saves when resuming (main process).
        """
        if resume and self.save_to_disk and self.save_dir and "://" not in self.save_dir:
            for leftover in remove_stale_temp_files(self.save_dir):
                self.logger.info(f"Removed {leftover}, left by an interrupted save")
        found = self.find_resume_checkpoint() if resume else ""
        self.resumed_from = found  # for restore_final
        if found:
            return self.load(found)
        return self.load(path, checkpointables=[])

    def restore_final(self, iteration: int, max_iter: int, file_prefix: str = "model") -> None:
        """After resuming a finished run, rewrite ``{file_prefix}_final.pth`` if it is unusable.

        Call after :meth:`resume_or_load` with the resumed ``iteration``. A run killed while it
        wrote the final file leaves the checkpoint of its last iteration, saved a moment before
        from the same state: it is copied onto the final file. Raises :class:`CheckpointError`
        with instructions when the resumed file is not the end of a ``max_iter`` run.
        """
        source = getattr(self, "resumed_from", "")
        if iteration < max_iter - 1 or not self.save_to_disk or not source:
            return
        final = os.path.join(self.save_dir, f"{file_prefix}_final.pth")
        problem = checkpoint_problem(final)
        if problem is None:
            return
        if iteration != max_iter - 1:
            raise CheckpointError(
                f"{final} is unusable ({problem}), and the checkpoint resumed from ends at "
                f"iteration {iteration}, past the last iteration of train.max_iter={max_iter}. "
                f"Either resume with train.max_iter={iteration + 1} to write the final file "
                f"from it, or copy the checkpoint you want: cp {source} {final}"
            )
        self.logger.warning(
            f"Training had finished but {final} is unusable ({problem}): writing it again from "
            f"the checkpoint of iteration {iteration}, {source}"
        )
        with open(source, "rb") as src, atomic_write(final, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        self.tag_last_checkpoint(os.path.basename(final))
