"""The output layer of every command: outputs checked before the work, committed together.

A command declares each output path it was given (`Outputs.file`, `Outputs.directory`)
before it starts working; a path that cannot be written is an `OutputError` (one line,
exit 2) before any cycle is simulated. The command then stages the bytes of each output
(`Outputs.write_bytes`, `write_text`, `write_json`, `save_npy`) and `commit()` (or leaving
the `with` block without an exception) writes them all at once:

1. every regular-file output is written to a hidden temporary file beside its target
   (`.NAME.XXXX.tmp`; a new output folder is built as a hidden temporary folder);
2. outputs that are written in place are written: `-` (stdout), and non-regular targets
   (a FIFO, a character device, anything under /dev or /proc such as /dev/stdout), which
   are never replaced by a regular file (a block device or a socket is refused);
3. the temporary files are renamed over their targets. A symlink is written through: the
   file it points to is replaced, the link itself is kept.

A failure (or an interrupt) before step 3 removes every temporary file and every folder
the commit created, so each pre-existing file is as it was and no new partial file is left;
a failure inside step 3 (a rename, which does not fail for lack of space) puts the old
files back from hard-link backups taken just before. Data written to stdout or a device in
step 2 cannot be taken back.

Missing parent folders of an output are created on purpose at commit time, when the
nearest existing ancestor is a writable folder. Units: sizes in bytes.
"""

import io
import json
import os
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from emulator.hw.errors import OutputError

STDOUT = "-"
_COMMITS = [0]      # commits under way in this process (read by the interrupt watchdog)
IN_PLACE_ROOTS = ("/dev/", "/proc/")   # paths written in place whatever they resolve to


@dataclass
class Target:
    """One declared output file: what the user typed and where the bytes go."""

    option: str                 # e.g. '--report'
    given: str                  # the path as the user wrote it
    path: Path | None           # the resolved file to replace (None: stdout)
    in_place: bool              # stdout, a device, a FIFO: written in place, not replaced
    existed: bool = False       # a regular file already at `path`
    folder: "Folder | None" = None   # the declared output folder holding it


@dataclass
class Folder:
    """One declared output folder (--plots DIR, --dump DIR)."""

    option: str
    given: str
    path: Path                  # resolved folder
    existed: bool
    files: dict[str, Target] = field(default_factory=dict)


def committing() -> bool:
    """True while some `Outputs.commit` is writing or renaming files."""
    return _COMMITS[0] > 0


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of `path` (itself excluded) that exists."""
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_parent(option: str, given: str, path: Path) -> None:
    """The folder that will hold `path` exists and is writable, or can be created inside
    a writable folder."""
    parent = path.parent
    if os.path.lexists(parent):
        if not parent.is_dir():
            raise OutputError(f"{option} {given}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {given}: folder {parent} is not writable")
        return
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise OutputError(f"{option} {given}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {given}: cannot create {parent}: folder {anchor} is "
                          f"not writable")


NAME_MAX, PATH_MAX = 255, 4096     # bytes, Linux


def _check_length(option: str, given: str) -> None:
    """A path the file system cannot hold (a name over NAME_MAX bytes, the temporary
    file's longer still) is refused now rather than at commit time."""
    if len(os.fsencode(os.path.abspath(given))) > PATH_MAX - 64:
        raise OutputError(f"{option}: the path is too long")
    for part in Path(given).parts:
        if len(os.fsencode(part)) > NAME_MAX - 24:     # room for '.NAME.XXXXXXXX.tmp'
            raise OutputError(f"{option}: the name '{part[:40]}...' is too long "
                              f"(at most {NAME_MAX - 24} bytes here)")


def _refuse_special(option: str, given: str, mode: int) -> None:
    """A block device (a disk) or a socket is never an output."""
    if stat.S_ISBLK(mode):
        raise OutputError(f"{option} {given}: is a block device; refusing to write over it")
    if stat.S_ISSOCK(mode):
        raise OutputError(f"{option} {given}: is a socket, not a file")


def _is_in_place_path(text: str) -> bool:
    absolute = os.path.abspath(text)
    return any(absolute.startswith(root) for root in IN_PLACE_ROOTS)


class Outputs:
    """The outputs of one command run (see the module docstring); a context manager that
    commits on success and discards everything staged on any exception."""

    def __init__(self):
        self.targets: list[Target] = []
        self.folders: list[Folder] = []
        self.staged: dict[int, bytes] = {}      # id(target) -> bytes
        self.committed = False

    # --- declaring (before the work) -------------------------------------------------------
    def file(self, given, option: str, stdout_ok: bool = True) -> Target | None:
        """Declare and check one output file; None when `given` is None."""
        if given is None:
            return None
        given = str(given)
        if given == STDOUT:
            if not stdout_ok:
                raise OutputError(f"{option}: '-' (stdout) is not possible for this output")
            if any(t.path is None for t in self.targets):
                raise OutputError(f"{option} -: stdout is already taken by another output")
            return self._add(Target(option, given, None, True))
        if given == "":
            raise OutputError(f"{option}: the path is empty")
        _check_length(option, given)
        return self._add(self._check_file(option, given, Path(given)))

    def directory(self, given, option: str, names=()) -> Folder | None:
        """Declare and check one output folder; None when `given` is None. `names`: files
        the command will write into it, checked now too (others when staged)."""
        if given is None:
            return None
        given = str(given)
        if given in ("", STDOUT):
            raise OutputError(f"{option}: expected a folder, got '{given}'")
        _check_length(option, given)
        path = Path(os.path.realpath(given))
        if path.exists():
            if not path.is_dir():
                raise OutputError(f"{option} {given}: exists and is not a folder")
            if not os.access(path, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {given}: folder is not writable")
            existed = True
        else:
            _check_parent(option, given, path)
            existed = False
        for other in self.folders:
            if other.path == path:
                raise OutputError(f"{option} {given}: the same folder as {other.option}")
        folder = Folder(option, given, path, existed)
        self.folders.append(folder)
        for name in names:
            self.in_folder(folder, name)
        return folder

    def in_folder(self, folder: Folder, name: str) -> Target:
        """The output file `name` inside a declared folder (checked like any file)."""
        if name in folder.files:
            return folder.files[name]
        given = os.path.join(folder.given, name)
        if folder.existed:
            target = self._check_file(folder.option, given, folder.path / name)
        else:
            target = Target(folder.option, given, folder.path / name, False)
        target.folder = folder
        folder.files[name] = self._add(target)
        return target

    def _check_file(self, option: str, given: str, path: Path) -> Target:
        if _is_in_place_path(given):
            if not os.path.exists(given):
                raise OutputError(f"{option} {given}: no such device or file")
            if not os.access(given, os.W_OK):
                raise OutputError(f"{option} {given}: not writable")
            _refuse_special(option, given, os.stat(given).st_mode)
            return Target(option, given, Path(given), True)
        real = Path(os.path.realpath(path))        # a symlink is written through
        if os.path.lexists(real):
            try:
                mode = os.stat(real).st_mode
            except OSError as exc:
                raise OutputError(f"{option} {given}: {exc.strerror}") from None
            if stat.S_ISDIR(mode):
                raise OutputError(f"{option} {given}: is a folder, expected a file")
            if not os.access(real, os.W_OK):
                raise OutputError(f"{option} {given}: file is not writable")
            if not stat.S_ISREG(mode):              # FIFO, character device: in place
                _refuse_special(option, given, mode)
                return Target(option, given, real, True)
            _check_parent(option, given, real)
            return Target(option, given, real, False, existed=True)
        _check_parent(option, given, real)
        return Target(option, given, real, False)

    def _add(self, target: Target) -> Target:
        for other in self.targets:
            if target.path is not None and other.path == target.path:
                raise OutputError(f"{target.option} {target.given}: the same file as "
                                  f"{other.option} {other.given}")
        self.targets.append(target)
        return target

    @property
    def uses_stdout(self) -> bool:
        """True when an output is `-`: the command then prints no tables on stdout."""
        return any(t.path is None for t in self.targets)

    # --- staging (during the work) ---------------------------------------------------------
    def write_bytes(self, target: Target | None, data: bytes) -> None:
        """Stage `data` for `target` (None: nothing to do)."""
        if target is not None:
            self.staged[id(target)] = bytes(data)

    def write_text(self, target: Target | None, text: str) -> None:
        self.write_bytes(target, text.encode("utf-8"))

    def write_json(self, target: Target | None, obj) -> None:
        """Indented, strict JSON: a NaN or Infinity is refused (OutputError), never written
        as the non-JSON `NaN`/`Infinity`."""
        if target is not None:
            try:
                text = json.dumps(obj, indent=2, allow_nan=False)
            except ValueError:
                raise OutputError(f"{target.option} {target.given}: the output holds a "
                                  f"non-finite number (NaN or Infinity), which JSON cannot "
                                  f"hold; check the inputs' numbers") from None
            self.write_text(target, text + "\n")

    def save_npy(self, target: Target | None, array) -> None:
        if target is not None:
            import numpy as np

            buffer = io.BytesIO()
            np.save(buffer, np.asarray(array))
            self.write_bytes(target, buffer.getvalue())

    # --- committing (at the end) -----------------------------------------------------------
    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None and not self.committed:
            self.commit()
        self.staged.clear()

    def commit(self) -> None:
        """Write every staged output (see the module docstring for the order)."""
        self.committed = True
        _COMMITS[0] += 1
        try:
            self._commit()
        finally:
            _COMMITS[0] -= 1

    def _commit(self) -> None:
        staged = [t for t in self.targets if id(t) in self.staged]
        self._adopt_into_new_folders(staged)
        temps: list[tuple[Target, Path]] = []     # (target, temporary file)
        made: list[Path] = []                     # folders created by this commit
        new_folders: dict[int, Path] = {}         # id(folder) -> temporary folder
        try:
            for target in staged:
                if target.in_place:
                    continue
                temps.append((target, self._stage_file(target, made, new_folders)))
            for target in staged:
                if target.in_place:
                    self._write_in_place(target)
            self._rename_all(temps, new_folders)
        except BaseException as exc:
            for _, tmp in temps:
                tmp.unlink(missing_ok=True)
            for tmp_dir in new_folders.values():
                _remove_tree(tmp_dir)
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:
                    pass
            if isinstance(exc, OSError):
                name = getattr(exc, "filename", None) or ""
                raise OutputError(f"writing outputs failed: {exc.strerror or exc}"
                                  f"{': ' + str(name) if name else ''}; no output was "
                                  f"changed") from None
            raise
        finally:
            self.staged.clear()

    def _adopt_into_new_folders(self, staged: list) -> None:
        """A file output inside a folder output that this run creates (`--plots out/
        --trace out/t.json`) is written with that folder, which appears as a whole."""
        for target in staged:
            if target.folder is not None or target.in_place or target.path is None:
                continue
            for folder in self.folders:
                if not folder.existed and folder.path in target.path.parents:
                    target.folder = folder
                    folder.files.setdefault(target.path.name, target)

    def _stage_file(self, target: Target, made: list, new_folders: dict) -> Path:
        """Write one staged output to a temporary file beside its target (or into the
        temporary folder of a new output folder)."""
        data = self.staged[id(target)]
        folder = target.folder
        if folder is not None and not folder.existed:
            tmp_dir = new_folders.get(id(folder))
            if tmp_dir is None:
                _make_parents(folder.path.parent, made)
                tmp_dir = Path(tempfile.mkdtemp(dir=folder.path.parent,
                                                prefix=f".{folder.path.name}.", suffix=".tmp"))
                os.chmod(tmp_dir, 0o777 & ~_umask())
                new_folders[id(folder)] = tmp_dir
            parent = tmp_dir / Path(target.path).relative_to(folder.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            final = parent / target.path.name
            with open(final, "wb") as handle:
                handle.write(data)
            os.chmod(final, 0o666 & ~_umask())
            return final
        _make_parents(target.path.parent, made)
        fd, tmp = tempfile.mkstemp(dir=target.path.parent, prefix=f".{target.path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            mode = (stat.S_IMODE(os.stat(target.path).st_mode) if target.existed
                    else 0o666 & ~_umask())
            os.chmod(tmp, mode)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _write_in_place(self, target: Target) -> None:
        data = self.staged[id(target)]
        if target.path is None:
            stream = getattr(sys.stdout, "buffer", None)
            if stream is None:
                sys.stdout.write(data.decode("utf-8", "replace"))
            else:
                stream.write(data)
            sys.stdout.flush()
            return
        with open(target.path, "wb") as handle:    # O_TRUNC is a no-op on FIFOs/devices
            handle.write(data)

    def _rename_all(self, temps: list, new_folders: dict) -> None:
        """Rename every temporary file over its target; on failure put the old files back."""
        backups: list[tuple[Path, Path | None]] = []   # (target, hard-link backup or None)
        done: list[Path] = []
        try:
            for target, tmp in temps:
                if target.folder is not None and not target.folder.existed:
                    continue
                backup = None
                if target.existed:
                    backup = target.path.with_name(f".{target.path.name}.{os.getpid()}.bak")
                    try:
                        os.link(target.path, backup)
                    except OSError:
                        backup = None
                backups.append((target.path, backup))
                os.replace(tmp, target.path)
                done.append(target.path)
            for folder in self.folders:
                if id(folder) in new_folders:
                    os.rename(new_folders[id(folder)], folder.path)
                    done.append(folder.path)
        except BaseException:
            for path, backup in backups:
                if path not in done:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    continue
                if backup is not None:
                    os.replace(backup, path)
                elif path.is_dir():
                    _remove_tree(path)
                else:
                    path.unlink(missing_ok=True)
            for folder in self.folders:
                if folder.path in done and id(folder) in new_folders:
                    _remove_tree(folder.path)
            raise
        for _, backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)


def _make_parents(folder: Path, made: list) -> None:
    """Create `folder` and its missing ancestors, recording each one created."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        made.append(path)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def write_now(path, data: bytes, option: str = "output") -> None:
    """Write one file through the output layer at once (library helpers, scripts)."""
    outputs = Outputs()
    target = outputs.file(str(path), option)
    outputs.write_bytes(target, data)
    outputs.commit()
