"""Restoring from backups at file level: selecting catalog rows (``select``) and writing files,
folders and symlinks from only the chunks that hold them (``files``)."""
