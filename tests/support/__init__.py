"""What the tests share: the gateway harness (:mod:`.harness`: served
gateways, homes, free ports, fixtures), UDP peers (:mod:`.peers`), the SIPp
launcher (:mod:`.sipp`), SIP messages and the RFC 4475 corpus, a TCP proxy
that cuts connections, and what to do when the machine lacks something a
test needs (:mod:`.environment`: fail under CI, skip elsewhere)."""
