"""Settings and the addresses the gateway gives out.

Belongs here: the settings model read from the TOML file and the command
line (:mod:`.settings`), and which address Via, Record-Route and the profile
documents carry (:mod:`.advertise`).  May import: ``sip`` only.
"""
