"""The app agent: quiesce applications, capture their metadata onto the disk (patent FIG. 2, 5A).

Declared applications (``--app SPEC``: ``postgres:CONNINFO``, ``sqlite:PATH``, ``maildir:PATH``,
``mbox:PATH``) and hooks (``--pre-freeze CMD``, ``--post-thaw CMD``) are quiesced around a
checkpoint's filesystem freeze by ``r2b.apps.agent.application_freeze``; what they hold is
written to ``/.r2b/app-metadata.json`` on a protected filesystem, so it is replicated with the
data and the backup proxy reads it from the snapshot.
"""
