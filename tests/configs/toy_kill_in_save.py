"""The toy regression, with a power cut in the middle of writing a checkpoint (resume tests).

With ``$PLAINMAMBA_TEST_KILL_SAVING=NAME`` the process SIGKILLs itself when ``torch.save`` has
written half of a file whose name contains ``NAME``, as a power cut or ``kill -9`` would.
"""

import io
import os
import signal

import torch

from .toy_regression import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_TARGET = os.environ.get("PLAINMAMBA_TEST_KILL_SAVING", "")

if _TARGET and not getattr(torch.save, "kills_midway", False):
    _save = torch.save

    def _killing_save(obj, f, *args, **kwargs):
        name = os.path.basename(str(getattr(f, "name", f)))
        if _TARGET not in name or not hasattr(f, "write"):
            return _save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        _save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    _killing_save.kills_midway = True
    torch.save = _killing_save

train.max_iter = 8
train.checkpointer.period = 4
train.eval_period = 0
train.log_period = 1
