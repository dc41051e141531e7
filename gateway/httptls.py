"""TLS for the gateway's HTTP listeners (the operations endpoint, the handheld intake)."""

from __future__ import annotations

import ssl

from gateway.config import HttpTlsConfig

__all__ = ["server_tls"]


def server_tls(tls: HttpTlsConfig | None) -> ssl.SSLContext | None:
    """HTTPS (TLS 1.2 or later), with client certificates required when a client CA is given;
    None: plain HTTP."""
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
