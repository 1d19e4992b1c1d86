"""ldap3, imported with pyasn1's deprecation warnings silenced (ldap3 2.9 uses old names).

pyasn1 >= 0.6 warns that ``tagMap``/``typeMap`` are deprecated when ldap3 imports them; the
warning is harmless but fatal under ``filterwarnings = error``. Import ldap3 through here.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core import exceptions
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn, parse_dn

__all__ = ["escape_filter_chars", "escape_rdn", "exceptions", "ldap3", "parse_dn"]
