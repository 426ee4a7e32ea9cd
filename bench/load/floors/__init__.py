"""The two floors the relay is measured against: the ASGI pass-through app under
hypercorn's trio worker, and a bare trio + h11 byte-splice proxy."""
