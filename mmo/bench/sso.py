"""The ``sso`` service the benchmark starts: the example SSO with a cheap password hash.

The example's scrypt cost (about 10 ms a hash on the reference machine, on the
worker's reactor thread) would make seeding thousands of bench accounts take
minutes and cap logins at about 100/s: W3 would measure password hashing, not
the edge. The login path is otherwise the real one (``sso.login`` -> broker ->
``session.open``).
"""

from __future__ import annotations

from mmo.examples.sso import SSOService

__all__ = ["BenchSSOService"]


class BenchSSOService(SSOService):
    """:class:`~mmo.examples.sso.SSOService` with the smallest scrypt cost."""

    scrypt_n = 2
    scrypt_r = 1
    scrypt_p = 1
