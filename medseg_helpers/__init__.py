"""medseg_helpers: the tested package behind the medseg course notebooks.

Modules are imported explicitly (``from medseg_helpers.data import io``); importing the
package has no side effects (no seeding, no plotting settings, no downloads).
"""

__version__ = "0.1.0"
