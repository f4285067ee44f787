"""Key a stream whose records are already ``Row(key, value)``, in Java.

PyFlink's ``key_by`` runs a Python function per record to build exactly that
``Row(key, value)`` shape, converting the whole record into Python and back.
rtrec's stages already know each record's key shard (the SQL computes it for
the user stage, the UserStage for the item stage), so they emit the shape
directly and the keying happens in Java with PyFlink's own key selector on
field 0: one Python hop less for every batch.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway


def keyed_on_first_field(stream: DataStream, key_type: TypeInformation, value_type: TypeInformation) -> KeyedStream:
    """``stream`` holds ``Row(key, value)`` records; key it by ``key`` (Java), process ``value`` (Python)."""
    j_selector = get_gateway().jvm.KeyByKeySelector()
    j_keyed = stream._j_data_stream.keyBy(j_selector, Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)
