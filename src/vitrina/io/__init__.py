"""Safe image decoding, file operations that never lose or overwrite user files, and the
manifest journal of the sorts."""

from __future__ import annotations

from vitrina.io.files import (
    PLACE_METHODS,
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    cache_dir,
    check_movable,
    disk_full_error,
    disk_of,
    fsync_dir,
    is_disk_full,
    make_output_dir,
    os_error_line,
    place_file,
    remove_stale_temps,
    save_new_image,
    unique_path,
)
from vitrina.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    IMAGE_EXTENSIONS_TEXT,
    file_digest,
    image_size,
    is_image_path,
    read_image,
    read_image_bytes,
)
from vitrina.io.journal import JournalRepair, ManifestJournal

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_EXTENSIONS_TEXT",
    "PLACE_METHODS",
    "TEMP_PREFIX",
    "JournalRepair",
    "ManifestJournal",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "cache_dir",
    "check_movable",
    "disk_full_error",
    "disk_of",
    "file_digest",
    "fsync_dir",
    "image_size",
    "is_disk_full",
    "is_image_path",
    "make_output_dir",
    "os_error_line",
    "place_file",
    "read_image",
    "read_image_bytes",
    "remove_stale_temps",
    "save_new_image",
    "unique_path",
]
