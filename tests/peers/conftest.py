from tests.peers.fixtures import baresip, kamailio, sipp, softphone, tls_cert

__all__ = ["baresip", "kamailio", "sipp", "softphone", "tls_cert"]
