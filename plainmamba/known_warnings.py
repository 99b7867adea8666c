"""Quiet the third-party warnings every run would otherwise print, and nothing else.

Each filter names the exact message and the module that raises it, so a new warning (or the same
text from our own code elsewhere) still shows. The list is in INSTALL.md ("Known warnings").
Entry points (tools/, projects/) call :func:`silence_known_warnings` before importing Detectron2;
the library itself never changes warning filters.
"""

import warnings

# (category, message regex, module regex of the line that warns, why it is harmless)
KNOWN_WARNINGS = (
    (
        FutureWarning,
        r"`torch\.jit\.script` is deprecated",
        r"torch\.jit\._script",
        "Detectron2 and timm script small helpers at import time; we never script.",
    ),
    (
        UserWarning,
        r"pkg_resources is deprecated as an API",
        r"detectron2\.config\.lazy",
        "Detectron2's LazyConfig imports pkg_resources; setuptools<81 keeps it available.",
    ),
    (
        UserWarning,
        r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing",
        r"torch\.functional",
        "Detectron2's anchor generator calls torch.meshgrid without indexing= (ours pass it).",
    ),
)


def silence_known_warnings() -> None:
    """Install narrow ``ignore`` filters for the warnings listed in :data:`KNOWN_WARNINGS`."""
    for category, message, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
