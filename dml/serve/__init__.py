"""Use a trained run: ``dml.load_run(run_dir)`` gives its network, config and class names, and
embeds images with exactly the run's evaluation preprocessing; collect images, index and search a
gallery, score a query set against a gallery, export.

- :mod:`.loaded`: :func:`load_run` and :class:`LoadedRun`;
- :mod:`.items`: the images a command takes and their embeddings' files;
- :mod:`.gallery`: the index folder and search;
- :mod:`.query_gallery`: query/gallery metrics;
- :mod:`.export`: the ONNX export.
"""
# every name the module had before it was a package (its commands and tests import them)
from .loaded import (_image_list, input_size, load_run, LoadedRun)
from .items import (_dataset_items, _items_csv, _read_list_file, _walk_images, check_new_folder,
                    check_writable, collect, embed_items, Item, ITEMS_HEADER, save_npy, save_text,
                    write_embeddings)
from .gallery import (build_index, file_sha256, Gallery, ImageSource, INDEX_FILE, INDEX_FORMAT,
                      ITEMS_FILE, META_FILE, open_index, result_rows, run_for_index, search)
from .query_gallery import (check_query_gallery_classes, labelled_items, query_gallery_metrics)

evaluate_query_gallery = query_gallery_metrics  # its name before "evaluate" meant one function

