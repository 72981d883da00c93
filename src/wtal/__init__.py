"""wtal: weakly-supervised temporal action localization.

Data flows one way: features -> model -> scores -> segments -> metrics,
through the packages ``wtal.data``, ``wtal.models``, ``wtal.engine`` and the
modules ``wtal.localize`` and ``wtal.evaluate``.
"""

from wtal.errors import WtalError

__all__ = ["WtalError", "__version__"]
__version__ = "0.1.0"
