"""The bounds on one request of the public API, in one place.

Every bound is checked at the edge, before anything is written or searched, and answered with
INVALID_ARGUMENT (a request the API never accepts) or RESOURCE_EXHAUSTED (a reply that would
not fit in one message). The proto comments (``proto/vectorsearch/v1/search_service.proto``)
quote these numbers; change both together.
"""

from __future__ import annotations

MAX_BATCH_ITEMS = 10_000
"""Items in one Upsert message (or one message of UpsertStream), ids in one Delete or Get."""
MAX_QUERIES = 1_000
"""Query vectors in one Search."""
MAX_K = 1_000
"""Results per query."""
MAX_RESULT_HITS = 100_000
"""Queries x k of one Search."""
MAX_FILTER_NODES = 1_024
"""Nodes (conditions, all_of, any_of, not) of one filter tree."""
MAX_FILTER_VALUES = 10_000
"""Values of all the conditions of one filter tree together (eq, in lists and range bounds)."""
MAX_FILTER_DEPTH = 32
"""Nesting of one filter tree."""
MAX_SEARCH_TEXTS = 64
"""Texts in one SearchByText."""
MAX_SEARCH_IMAGES = 16
"""Images in one SearchByImage."""
MAX_INGEST_ITEMS = 256
"""Items in one message of IngestImages or IngestTexts."""

MAX_ID_BYTES = 256
MAX_URI_BYTES = 4_096
MAX_TAG_BYTES = 256
MAX_TAGS = 64
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_STRING_BYTES = 4_096
MAX_COLLECTION_ATTRIBUTES = 1_000
"""Distinct attribute names one collection may ever have (each name's type is fixed per collection)."""
MAX_FILTER_STRING_BYTES = 4_096
MAX_TEXT_BYTES = 16 * 1024
"""UTF-8 bytes of one text to embed (CLIP reads only its first 77 tokens anyway)."""
MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Encoded bytes of one image to embed, sent or fetched from a URI."""

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""The default receive and send limit of one message (``--max-message-mb``)."""
