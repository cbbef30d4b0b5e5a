"""One time unit for every bound in the suite, scaled by DUPLEXTHREADS_TEST_TIME_UNIT.

Bounds in tests are written as multiples of UNIT, so a slow machine sets the variable (for
example to 3) instead of any test loosening its own numbers.
"""

from __future__ import annotations

import os

UNIT = float(os.environ.get("DUPLEXTHREADS_TEST_TIME_UNIT", "1.0"))
