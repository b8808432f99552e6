"""More than one machine: the batch commands on Ray Data (``--ray``).

>>> from vitrina.scale import RayOptions, ray_sort_folder
>>> ray_sort_folder("photos/", "runs/shop", "sorted/", ray=RayOptions())  # doctest: +SKIP

Ray is the optional extra ``[scale]`` (``pip install 'vitrina[scale]'``); it is imported only
when a ``--ray`` run starts.
"""

from vitrina.scale.ray_batch import (
    DetectJob,
    EmbedJob,
    RayEmbedder,
    RayJob,
    RayOptions,
    SortJob,
    import_ray,
    ray_embed_files,
    ray_index_build,
    ray_predict_photos,
    ray_sort_folder,
    work_dir_for,
)

__all__ = [
    "DetectJob",
    "EmbedJob",
    "RayEmbedder",
    "RayJob",
    "RayOptions",
    "SortJob",
    "import_ray",
    "ray_embed_files",
    "ray_index_build",
    "ray_predict_photos",
    "ray_sort_folder",
    "work_dir_for",
]
