"""Input limits that both the config (flag validation) and the readers (data/) enforce.

They live on the ground floor so that ``config`` can validate a flag against the same number the
reader applies without importing the data floor (docs/DESIGN.md, Layering).
"""

#: Images whose header declares more pixels than this are not decoded (``--max-image-pixels``):
#: 64 Mpx is 8000x8000, far above any detector's training size and 1/4 of PIL's bomb warning level.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000

#: Largest class id a label line may carry. Ids beyond it ("1e30") are typos or garbage, and int64
#: arrays (and --classes) could not hold every such id anyway.
MAX_CLASS_ID = 2**31 - 1
