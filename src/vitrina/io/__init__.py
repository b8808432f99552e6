"""Safe image decoding and file operations that never lose or overwrite user files."""

from __future__ import annotations

from vitrina.io.files import (
    PLACE_METHODS,
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    cache_dir,
    place_file,
    remove_stale_temps,
    save_new_image,
    unique_path,
)
from vitrina.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    file_digest,
    image_size,
    is_image_path,
    read_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PLACE_METHODS",
    "TEMP_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "cache_dir",
    "file_digest",
    "image_size",
    "is_image_path",
    "place_file",
    "read_image",
    "remove_stale_temps",
    "save_new_image",
    "unique_path",
]
