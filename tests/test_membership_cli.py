"""Members-only networks as a user meets them: `votechain network create`,
`admit` and `revoke`; `join`, `admit --member-key` and `install`, where the
station's private key never leaves it; a peer that refuses to start without a
valid certificate, and `votechain verify` checking every block's author; all
through the real command, in subprocesses, with exit codes and one-line errors.

Data directories for `verify` are built directly (ChainStore + blockkit), so a
test can put exactly the block it needs into a chain: an outsider's, a revoked
member's. Networks made for them have difficulty 1, blockkit's. The last test
runs in process: it drives verify's worker pool over a short chain, which only
a chunk size no command line offers can do.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from blockkit import LOW_DIFFICULTY, T0, extend, fixed_key, other_key
from framework.members import Organizer
from framework.processes import Processes, run, wait_for
from votechain.app import verify as verify_module
from votechain.core.block import Block
from votechain.core.chain import Chain
from votechain.core.keys import KEY_FILE, NodeKey
from votechain.core.membership import Certificate, Revocations, Revoked, fingerprint
from votechain.errors import InvalidBlock, NotAMember
from votechain.net.control_client import ControlClient
from votechain.node import membership_files as files
from votechain.node.store import ChainStore

# A tracker nobody listens on: every refusal below happens before the peer
# contacts anything, and a peer that wrongly started would block until the
# subprocess timeout failed the test.
NO_TRACKER = "127.0.0.1:9"
# Starting the interpreter and importing cryptography; generous for a loaded machine.
REFUSAL_TIMEOUT = 60.0


Result = subprocess.CompletedProcess[str]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


def fails_with(result: Result, *fragments: str) -> str:
    """The one stderr line of a command that exited 1, checked to name each fragment."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    line = one_line(result.stderr)
    for fragment in fragments:
        assert fragment in line
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes: to show a refusal changed nothing."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def org(tmp_path: Path) -> Organizer:
    return Organizer(tmp_path / "organizer", "vote", difficulty=3)


# ================================================================ network create / admit / revoke


def test_create_writes_the_network_and_a_0600_authority(tmp_path: Path) -> None:
    out = tmp_path / "org"
    result = run("network", "create", "election", "--difficulty", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    network_path, authority_path = out / "election.network", out / "election.authority"
    network = files.read_network(network_path)
    assert (network.name, network.difficulty) == ("election", 3)
    assert network.authority == files.read_authority(authority_path).public_der
    assert stat.S_IMODE(authority_path.stat().st_mode) == 0o600
    # Public: everyone's to read.
    assert stat.S_IMODE(network_path.stat().st_mode) & 0o044 == 0o044
    assert network.id.hex() in result.stdout
    assert str(network_path) in result.stdout
    assert str(authority_path) in result.stdout


def test_create_refuses_to_replace_an_authority(tmp_path: Path) -> None:
    assert run("network", "create", "election", "--out", str(tmp_path)).returncode == 0
    before = snapshot(tmp_path)
    result = run("network", "create", "election", "--out", str(tmp_path))
    fails_with(result, "election.authority exists", "refusing")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("name", "reason"), [("a/b", "cannot be a file name"),
                                              (".hidden", "cannot be a file name"),
                                              ("x" * 65, "at most 64")])
def test_create_refuses_a_bad_name(tmp_path: Path, name: str, reason: str) -> None:
    fails_with(run("network", "create", name, "--out", str(tmp_path)), reason)
    assert snapshot(tmp_path) == {}


def test_admit_makes_the_key_and_writes_certificate_and_network_copy(
    tmp_path: Path, org: Organizer
) -> None:
    data_dir = tmp_path / "station-1"
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(org.authority_path), "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    key = NodeKey.from_pem((data_dir / KEY_FILE).read_bytes())
    assert stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode) == 0o600
    cert = files.read_certificate(data_dir / files.CERTIFICATE_FILE)
    assert (cert.member, cert.label, cert.network) == (key.public_der, "station-1", org.network.id)
    org.members().admit(cert)  # signed by the authority
    assert files.read_network(data_dir / files.NETWORK_COPY) == org.network
    assert fingerprint(key.public_der).hex() in result.stdout
    assert "'station-1'" in result.stdout


def test_admit_keeps_an_existing_key_and_takes_a_label(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / KEY_FILE).write_bytes(fixed_key().to_pem())
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(org.authority_path), "--data-dir", str(data_dir), "--label", "Town hall")
    assert result.returncode == 0, result.stderr
    cert = files.read_certificate(data_dir / files.CERTIFICATE_FILE)
    assert (cert.member, cert.label) == (fixed_key().public_der, "Town hall")


def test_admit_with_another_networks_authority_is_refused(tmp_path: Path, org: Organizer) -> None:
    other = Organizer(tmp_path / "other", "other")
    data_dir = tmp_path / "d"
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(other.authority_path), "--data-dir", str(data_dir))
    fails_with(result, "not this network's authority")
    assert not (data_dir / files.CERTIFICATE_FILE).exists()


def test_admit_with_a_file_that_is_no_key_is_refused(tmp_path: Path, org: Organizer) -> None:
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(org.network_path), "--data-dir", str(tmp_path / "d"))
    fails_with(result, "not an RSA private key")


def test_revoke_by_directory_certificate_or_keys_accumulates_signed_entries(
    tmp_path: Path, org: Organizer
) -> None:
    dirs = [tmp_path / f"s{i}" for i in range(4)]
    keys = [org.admit(d).key.public_der for d in dirs]
    (dirs[3] / "s3.pub").write_text(files.public_pem(keys[3]))  # what `join` sends
    members = [str(dirs[0]), str(dirs[1] / files.CERTIFICATE_FILE), str(dirs[2] / KEY_FILE),
               str(dirs[3] / "s3.pub")]
    for serial, (member, height) in enumerate(zip(members, (0, 7, 0, 2), strict=True), 1):
        result = run("network", "revoke", str(org.network_path), "--authority",
                     str(org.authority_path), "--member", member, "--from-height", str(height))
        assert result.returncode == 0, result.stderr
        assert f"serial {serial}" in result.stdout
    revoked_path = org.root / "vote.revoked"
    revocations = files.read_revocations(revoked_path)
    org.members().revoke(revocations)  # this network's, signed by its authority
    assert revocations.serial == 4
    assert set(revocations.revoked) == {Revoked(fingerprint(keys[0]), 0),
                                        Revoked(fingerprint(keys[1]), 7),
                                        Revoked(fingerprint(keys[2]), 0),
                                        Revoked(fingerprint(keys[3]), 2)}


def test_revoke_of_nothing_is_one_line(tmp_path: Path, org: Organizer) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("network", "revoke", str(org.network_path), "--authority",
                 str(org.authority_path), "--member", str(empty))
    fails_with(result, "neither member.cert nor node_key.pem")
    assert not (org.root / "vote.revoked").exists()


def test_admit_refuses_a_revoked_key(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "d"
    org.revoke(org.admit(data_dir).key.public_der)
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(org.authority_path), "--data-dir", str(data_dir))
    fails_with(result, "is revoked", "move that file away")


# ================================================================ join, admit --member-key, install


def join(network: Path, data_dir: Path) -> Result:
    return run("network", "join", str(network), "--data-dir", str(data_dir))


def admit_key(org: Organizer, member_key: Path, *extra: str, cwd: Path | None = None) -> Result:
    return run("network", "admit", str(org.network_path), "--authority",
               str(org.authority_path), "--member-key", str(member_key), *extra, cwd=cwd)


def install(network: Path, data_dir: Path, certificate: Path) -> Result:
    return run("network", "install", str(network), "--data-dir", str(data_dir),
               "--certificate", str(certificate))


def test_join_makes_the_key_and_writes_its_public_half(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "station"
    result = join(org.network_path, data_dir)
    assert result.returncode == 0, result.stderr
    key = NodeKey.from_pem((data_dir / KEY_FILE).read_bytes())
    assert stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode) == 0o600
    pub_path = data_dir / files.PUBLIC_KEY_FILE
    assert pub_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in pub_path.read_text()
    assert files.read_public_key(pub_path) == key.public_der
    assert files.read_network(data_dir / files.NETWORK_COPY) == org.network
    assert not (data_dir / files.CERTIFICATE_FILE).exists()
    assert str(pub_path) in result.stdout
    assert fingerprint(key.public_der).hex() in result.stdout
    # Again: the same key, the same public file.
    before = snapshot(data_dir)
    assert join(org.network_path, data_dir).returncode == 0
    assert snapshot(data_dir) == before


def test_join_refuses_a_directory_of_another_network(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "station"
    Organizer(tmp_path / "other", "other").admit(data_dir)
    before = snapshot(data_dir)
    fails_with(join(org.network_path, data_dir), "belongs to network 'other'", "not 'vote'")
    assert snapshot(data_dir) == before


def test_admit_member_key_writes_label_cert_beside_the_pub_or_out(
    tmp_path: Path, org: Organizer
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    key = fixed_key()
    (inbox / "town-hall.pub").write_text(files.public_pem(key.public_der))
    result = admit_key(org, inbox / "town-hall.pub")
    assert result.returncode == 0, result.stderr
    cert = files.read_certificate(inbox / "town-hall.cert")
    assert (cert.member, cert.label, cert.network) == (key.public_der, "town-hall", org.network.id)
    org.members().admit(cert)  # signed by the authority
    assert fingerprint(key.public_der).hex() in result.stdout
    assert str(inbox / "town-hall.cert") in result.stdout
    # A label that is no plain file name still gives one; --out goes where it says.
    assert admit_key(org, inbox / "town-hall.pub", "--label", "Town hall/2").returncode == 0
    assert files.read_certificate(inbox / "Town-hall-2.cert").label == "Town hall/2"
    out = tmp_path / "outbox" / "th.cert"
    assert admit_key(org, inbox / "town-hall.pub", "--out", str(out)).returncode == 0
    assert files.read_certificate(out) == cert  # deterministic signature, same label


# Each refusal of `admit --member-key`: how to set it up, what the line says.
def _member_pub_without_label(org: Organizer, inbox: Path) -> list[str]:
    (inbox / "member.pub").write_text(files.public_pem(fixed_key().public_der))
    return ["--member-key", str(inbox / "member.pub")]


def _private_key_sent(org: Organizer, inbox: Path) -> list[str]:
    (inbox / "node_key.pem").write_bytes(fixed_key().to_pem())
    return ["--member-key", str(inbox / "node_key.pem"), "--label", "x"]


def _not_a_key(org: Organizer, inbox: Path) -> list[str]:
    (inbox / "x.pub").write_text("-----BEGIN PUBLIC KEY-----\nnonsense\n")
    return ["--member-key", str(inbox / "x.pub")]


def _revoked_public_key(org: Organizer, inbox: Path) -> list[str]:
    org.revoke(fixed_key().public_der)
    (inbox / "x.pub").write_text(files.public_pem(fixed_key().public_der))
    return ["--member-key", str(inbox / "x.pub")]


def _label_of_another_key(org: Organizer, inbox: Path) -> list[str]:
    (inbox / "x.pub").write_text(files.public_pem(fixed_key().public_der))
    (inbox / "x.cert").write_text(org.certify(other_key(), "x").to_json())
    return ["--member-key", str(inbox / "x.pub")]


ADMIT_KEY_REFUSALS: dict[str, tuple[Callable[[Organizer, Path], list[str]], Sequence[str]]] = {
    "member.pub without --label": (_member_pub_without_label, ["give --label"]),
    "a private key": (_private_key_sent, ["holds a private key", "votechain network join"]),
    "not a key": (_not_a_key, ["not a PEM public key"]),
    "revoked key": (_revoked_public_key, ["is revoked", "votechain network join"]),
    "a label taken by another key": (_label_of_another_key,
                                     ["certificate of another key", "refusing to replace"]),
}


@pytest.mark.parametrize("case", ADMIT_KEY_REFUSALS)
def test_admit_member_key_refusals_are_one_line_and_write_nothing(
    tmp_path: Path, org: Organizer, case: str
) -> None:
    setup, fragments = ADMIT_KEY_REFUSALS[case]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    extra = setup(org, inbox)
    before = snapshot(inbox)
    fails_with(run("network", "admit", str(org.network_path), "--authority",
                   str(org.authority_path), *extra), *fragments)
    assert snapshot(inbox) == before


@pytest.mark.parametrize("extra", [["--data-dir", "d", "--member-key", "k.pub"], [],
                                   ["--data-dir", "d", "--out", "x.cert"]])
def test_admit_takes_exactly_one_of_data_dir_and_member_key(
    tmp_path: Path, org: Organizer, extra: list[str]
) -> None:
    result = run("network", "admit", str(org.network_path), "--authority",
                 str(org.authority_path), *extra, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert one_line(result.stderr).startswith("votechain")
    assert not (tmp_path / "d").exists()


def joined(org: Organizer, data_dir: Path) -> bytes:
    """A station that ran `join` (in process: the CLI's is tested above); its public key."""
    member, _ = files.join(org.network, data_dir)
    return member


def _certificate_of_another_key(org: Organizer, member: bytes, tmp: Path) -> Certificate:
    return org.certify(other_key(), "neighbour")


def _certificate_of_another_network(org: Organizer, member: bytes, tmp: Path) -> Certificate:
    other = Organizer(tmp / "other", "other")
    return Certificate.issue(other.authority, other.network, member, "station")


def _certificate_of_another_authority(org: Organizer, member: bytes, tmp: Path) -> Certificate:
    return Certificate.issue(other_key(), org.network, member, "forged")


def _certificate_of_a_revoked_key(org: Organizer, member: bytes, tmp: Path) -> Certificate:
    org.revoke(member)  # vote.revoked, beside the network file
    return Certificate.issue(org.authority, org.network, member, "station")


INSTALL_REFUSALS: dict[str, tuple[Callable[[Organizer, bytes, Path], Certificate | str],
                                  Sequence[str]]] = {
    "another key": (_certificate_of_another_key, ["certifies another key", "member.pub"]),
    "another network": (_certificate_of_another_network, ["for another network"]),
    "another authority": (_certificate_of_another_authority,
                          ["not signed by this network's authority"]),
    "revoked key": (_certificate_of_a_revoked_key, ["is revoked from height 0"]),
    "malformed": (lambda org, member, tmp: '{"format": "votechain-certificate/1", ',
                  ["not JSON"]),
    "not a certificate": (lambda org, member, tmp: org.network.to_json(),
                          ["not a votechain-certificate/1 file"]),
}


@pytest.mark.parametrize("case", INSTALL_REFUSALS)
def test_install_refuses_a_wrong_certificate_in_one_line_changing_nothing(
    tmp_path: Path, org: Organizer, case: str
) -> None:
    make, fragments = INSTALL_REFUSALS[case]
    data_dir = tmp_path / "station"
    member = joined(org, data_dir)
    made = make(org, member, tmp_path)
    cert_path = tmp_path / "mail" / "station.cert"
    cert_path.parent.mkdir()
    cert_path.write_text(made if isinstance(made, str) else made.to_json())
    before = snapshot(data_dir)
    line = fails_with(install(org.network_path, data_dir, cert_path), *fragments)
    assert line.startswith("votechain network install: error: ")
    assert snapshot(data_dir) == before
    assert not (data_dir / files.CERTIFICATE_FILE).exists()


def test_install_before_join_says_to_join(tmp_path: Path, org: Organizer) -> None:
    cert_path = tmp_path / "station.cert"
    cert_path.write_text(org.certify(fixed_key(), "station").to_json())
    data_dir = tmp_path / "station"
    fails_with(install(org.network_path, data_dir, cert_path), "no node_key.pem",
               "votechain network join")
    assert not data_dir.exists()


def test_install_refuses_a_directory_of_another_network(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "station"
    Organizer(tmp_path / "other", "other").admit(data_dir)
    cert_path = tmp_path / "station.cert"
    key = NodeKey.from_pem((data_dir / KEY_FILE).read_bytes())
    cert_path.write_text(org.certify(key, "station").to_json())
    before = snapshot(data_dir)
    fails_with(install(org.network_path, data_dir, cert_path), "belongs to network 'other'")
    assert snapshot(data_dir) == before


# ================================================================ a peer refuses to start


def peer(network: Path, data_dir: Path, *extra: str) -> Result:
    return run("peer", "--network", str(network), "--tracker", NO_TRACKER,
               "--data-dir", str(data_dir), "--workers", "1", *extra, timeout=REFUSAL_TIMEOUT)


def test_a_peer_without_a_certificate_says_what_to_run(tmp_path: Path, org: Organizer) -> None:
    data_dir = tmp_path / "station"
    line = fails_with(peer(org.network_path, data_dir), "is not a member of network 'vote'")
    assert (f"votechain network admit {org.network_path} --authority "
            f"{org.root / 'vote.authority'} --data-dir {data_dir}") in line
    assert "--observer" in line
    assert snapshot(data_dir) == {}


# Each bad setup: (what it does to a fresh organizer's data directory, and the
# network file to start with) -> what the one line must say.
Setup = Callable[[Organizer, Path, Path], Path]


def signed_by_another_authority(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    key = org.admit(data_dir).key
    forged = Certificate.issue(other_key(), org.network, key.public_der, "forged")
    (data_dir / files.CERTIFICATE_FILE).write_text(forged.to_json())
    return org.network_path


def another_networks_certificate(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    Organizer(tmp / "other", "other", difficulty=3).admit(data_dir)
    # Without the directory's copy of its network, the certificate itself must be refused.
    (data_dir / files.NETWORK_COPY).unlink()
    return org.network_path


def directory_of_another_network(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    Organizer(tmp / "other", "other", difficulty=3).admit(data_dir)
    return org.network_path


def revoked_key(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.revoke(org.admit(data_dir).key.public_der)
    return org.network_path


def malformed_certificate(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.admit(data_dir)
    (data_dir / files.CERTIFICATE_FILE).write_text('{"format": "votechain-certificate/1", ')
    return org.network_path


def certificate_of_another_key(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.admit(data_dir)
    org.admit(tmp / "neighbour")
    (data_dir / files.CERTIFICATE_FILE).write_bytes(
        (tmp / "neighbour" / files.CERTIFICATE_FILE).read_bytes())
    return org.network_path


def malformed_network_file(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.admit(data_dir)
    bad = tmp / "bad.network"
    bad.write_text("this is not a network file\n")
    return bad


def edited_network_file(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.admit(data_dir)
    fields = json.loads(org.network_path.read_text())
    fields["difficulty"] = 1  # an easier chain, under the same id: refused
    edited = tmp / "edited.network"
    edited.write_text(json.dumps(fields))
    return edited


def revocations_signed_by_another_key(org: Organizer, data_dir: Path, tmp: Path) -> Path:
    org.admit(data_dir)
    forged = Revocations.issue(other_key(), org.network, 1, (Revoked(bytes(32)),))
    (org.root / "vote.revoked").write_text(forged.to_json())
    return org.network_path


BAD_SETUPS: dict[str, tuple[Setup, Sequence[str]]] = {
    "wrong authority": (signed_by_another_authority, ["not signed by this network's authority",
                                                      "votechain network admit"]),
    "another network's certificate": (another_networks_certificate, ["for another network"]),
    "directory of another network": (directory_of_another_network,
                                      ["belongs to network 'other'", "not 'vote'"]),
    "revoked key": (revoked_key, ["is revoked from height 0", "admit a new key"]),
    "malformed certificate": (malformed_certificate, ["member.cert", "not JSON"]),
    "certificate of another key": (certificate_of_another_key, ["certifies another key"]),
    "malformed network file": (malformed_network_file, ["bad.network", "not JSON"]),
    "edited network file": (edited_network_file, ["id does not match"]),
    "forged revocation list": (revocations_signed_by_another_key,
                               ["revocation list is not signed by this network's authority"]),
}


@pytest.mark.parametrize("case", BAD_SETUPS)
def test_a_bad_certificate_or_file_is_one_clear_line_and_changes_nothing(
    tmp_path: Path, org: Organizer, case: str
) -> None:
    setup, fragments = BAD_SETUPS[case]
    data_dir = tmp_path / "station"
    network_path = setup(org, data_dir, tmp_path)
    before = snapshot(data_dir)
    fails_with(peer(network_path, data_dir), *fragments)
    assert snapshot(data_dir) == before


def test_a_revocation_list_given_with_revocations_is_applied(
    tmp_path: Path, org: Organizer
) -> None:
    data_dir = tmp_path / "station"
    key = org.admit(data_dir).key.public_der
    # Revoked in a list kept elsewhere than beside the network file.
    elsewhere = tmp_path / "mail" / "latest.revoked"
    files.revoke(org.network, org.authority, elsewhere, key, 0)
    fails_with(peer(org.network_path, data_dir, "--revocations", str(elsewhere)), "revoked")


# ================================================================ members and observers start


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.mark.slow
def test_a_member_writes_and_an_observer_reads_and_audits(
    tmp_path: Path, org: Organizer, processes: Processes
) -> None:
    tracker = processes.start("tracker", "tracker", "--port", "0")
    assert tracker.address is not None
    at = f"{tracker.address[0]}:{tracker.address[1]}"
    member_dir, observer_dir = tmp_path / "member", tmp_path / "observer"
    assert run("network", "admit", str(org.network_path), "--authority",
               str(org.authority_path), "--data-dir", str(member_dir)).returncode == 0
    common = ("--network", str(org.network_path), "--tracker", at, "--workers", "1")
    member = processes.start("member", "peer", *common, "--data-dir", str(member_dir))
    observer = processes.start("observer", "peer", *common, "--data-dir", str(observer_dir),
                               "--observer")
    assert not (observer_dir / files.CERTIFICATE_FILE).exists()

    for category in ("alice", "bob"):
        voted = run("vote", "--data-dir", str(member_dir), category)
        assert voted.returncode == 0, voted.stderr
    wait_for(lambda: ControlClient.from_data_dir(observer_dir).tally() == {"alice": 1, "bob": 1},
             60.0, "the observer to sync the member's two votes")

    # An observer writes nothing: its vote is refused at once, saying why (the
    # short --timeout only bounds how long a wrong answer would take to show).
    refused = run("vote", "--data-dir", str(observer_dir), "--timeout", "5", "mallory")
    fails_with(refused, "observer")

    assert processes.stop(observer) == 0
    assert processes.stop(member) == 0
    for data_dir in (member_dir, observer_dir):
        verified = run("verify", "--data-dir", str(data_dir))
        assert verified.returncode == 0, verified.stderr
        assert f"network 'vote' id {org.network.id.hex()}" in verified.stdout
        assert "2 votes" in verified.stdout


@pytest.mark.slow
def test_join_admit_member_key_install_then_the_station_writes(
    tmp_path: Path, org: Organizer, processes: Processes
) -> None:
    """The multi-host flow: the station's private key never leaves its directory.
    The organizer admits from a directory holding only the network, the
    authority and the station's public key."""
    station = tmp_path / "station-host" / "town-hall"
    join_result = join(org.network_path, station)
    assert join_result.returncode == 0, join_result.stderr
    private_pem = (station / KEY_FILE).read_bytes()

    # The organizer's machine: the .pub arrived by mail, under the station's name.
    desk = tmp_path / "organizer-host"
    desk.mkdir()
    for path in (org.network_path, org.authority_path):
        (desk / path.name).write_bytes(path.read_bytes())
    (desk / "town-hall.pub").write_bytes((station / files.PUBLIC_KEY_FILE).read_bytes())
    assert sorted(p.name for p in desk.iterdir()) == ["town-hall.pub", "vote.authority",
                                                     "vote.network"]
    admitted = run("network", "admit", "vote.network", "--authority", "vote.authority",
                   "--member-key", "town-hall.pub", "--label", "Town hall", cwd=desk)
    assert admitted.returncode == 0, admitted.stderr
    # The fingerprint the organizer reads out is the one the station printed.
    key = NodeKey.from_pem(private_pem)
    shown = fingerprint(key.public_der).hex()
    assert shown in join_result.stdout and shown in admitted.stdout
    assert sorted(p.name for p in desk.iterdir()) == ["Town-hall.cert", "town-hall.pub",
                                                     "vote.authority", "vote.network"]

    # Back at the station (it has its own copy of the network file).
    installed = install(station / files.NETWORK_COPY, station, desk / "Town-hall.cert")
    assert installed.returncode == 0, installed.stderr
    assert (station / KEY_FILE).read_bytes() == private_pem
    cert = files.read_certificate(station / files.CERTIFICATE_FILE)
    assert (cert.member, cert.label) == (key.public_der, "Town hall")

    tracker = processes.start("tracker", "tracker", "--port", "0")
    assert tracker.address is not None
    at = f"{tracker.address[0]}:{tracker.address[1]}"
    peer_ = processes.start("town-hall", "peer", "--network", str(org.network_path),
                            "--tracker", at, "--workers", "1", "--data-dir", str(station))
    voted = run("vote", "--data-dir", str(station), "blue")
    assert voted.returncode == 0, voted.stderr
    assert processes.stop(peer_) == 0
    verified = run("verify", "--data-dir", str(station))
    assert verified.returncode == 0, verified.stderr
    assert "1 votes" in verified.stdout


# ================================================================ verify checks every author


def member_store(data_dir: Path, org: Organizer, authors: Sequence[NodeKey],
                 certified: Sequence[NodeKey] = (), *, copy_network: bool = True) -> list[Block]:
    """A data directory whose chain has one block per entry of `authors`, signed
    by it, on `org`'s network; the store keeps a certificate for each of
    `certified` (what a node keeps for every member whose block it stored)."""
    blocks = [org.network.genesis]
    for i, key in enumerate(authors):
        blocks += extend(blocks[-1], [f"v{i}"], key=key, timestamp=T0 + i)
    store = ChainStore.open(data_dir, org.network.difficulty, genesis=org.network.genesis)
    try:
        for block in blocks[1:]:
            store.append(block)
        store.save_certificates(
            [(k.public_der, org.certify(k, f"station {i}").encode())
             for i, k in enumerate(certified)])
    finally:
        store.close()
    if copy_network:
        (data_dir / files.NETWORK_COPY).write_text(org.network.to_json())
    return blocks


@pytest.fixture
def easy(tmp_path: Path) -> Organizer:
    """A network at blockkit's difficulty, so its helpers mine the blocks."""
    return Organizer(tmp_path / "organizer", "audit", difficulty=LOW_DIFFICULTY)


def verify(data_dir: Path, *extra: str) -> Result:
    return run("verify", "--data-dir", str(data_dir), "--workers", "1", *extra)


def test_verify_names_the_network_and_counts_members(tmp_path: Path, easy: Organizer) -> None:
    member = fixed_key()
    member_store(tmp_path / "d", easy, [member] * 4, [member])
    result = verify(tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert (f"network 'audit' id {easy.network.id.hex()}, every author one of 1 members"
            in result.stdout)
    assert "4 votes" in result.stdout


def test_verify_rejects_a_block_by_a_non_member_naming_it(
    tmp_path: Path, easy: Organizer
) -> None:
    member = fixed_key()
    blocks = member_store(tmp_path / "d", easy, [member, member, other_key(), member], [member])
    line = fails_with(verify(tmp_path / "d"), f"block 3 {blocks[3].hash.hex()[:16]}",
                      "author is not a member of this network")
    assert line.startswith("votechain verify: error: ")


def test_verify_rejects_a_chain_re_signed_by_an_outsider(tmp_path: Path, easy: Organizer) -> None:
    # Valid proof of work, valid signatures, the network's genesis: only the
    # missing certificate gives it away, at its first block. The outsider's
    # forged certificate in the store is refused and counts for nothing.
    outsider = other_key()
    member_store(tmp_path / "d", easy, [outsider] * 3)
    store = ChainStore.open(tmp_path / "d", LOW_DIFFICULTY, genesis=easy.network.genesis)
    forged = Certificate.issue(outsider, easy.network, outsider.public_der, "me")
    store.save_certificates([(outsider.public_der, forged.encode())])
    store.close()
    fails_with(verify(tmp_path / "d"), "block 1 ", "author is not a member")


def test_verify_applies_the_newest_revocation_list(tmp_path: Path, easy: Organizer) -> None:
    member = fixed_key()
    data_dir = tmp_path / "d"
    member_store(data_dir, easy, [member] * 4, [member])
    easy.revoke(member.public_der, from_height=3)  # audit.revoked, beside audit.network
    # The directory has no list of its own: the chain is fine as far as it knows...
    assert verify(data_dir).returncode == 0
    # ...and the list beside --network revokes blocks 3 and up.
    fails_with(verify(data_dir, "--network", str(easy.network_path)),
               "block 3 ", "revoked from height 3")
    # An older list in the directory does not undo a newer one beside the network.
    older = Revocations.issue(easy.authority, easy.network, 0, ())
    (data_dir / files.REVOCATIONS_COPY).write_text(older.to_json())
    fails_with(verify(data_dir, "--network", str(easy.network_path)), "revoked from height 3")


def test_verify_with_another_network_file_fails(tmp_path: Path, easy: Organizer) -> None:
    member_store(tmp_path / "d", easy, [fixed_key()], [fixed_key()])
    other = Organizer(tmp_path / "other", "other", difficulty=LOW_DIFFICULTY)
    fails_with(verify(tmp_path / "d", "--network", str(other.network_path)),
               "holds network 'audit'", "not 'other'")


def test_verify_with_network_finds_a_chain_of_another_genesis(
    tmp_path: Path, easy: Organizer
) -> None:
    other = Organizer(tmp_path / "other", "other", difficulty=LOW_DIFFICULTY)
    member_store(tmp_path / "d", other, [fixed_key()], copy_network=False)
    fails_with(verify(tmp_path / "d", "--network", str(easy.network_path)),
               "block 0 ", "not this network's genesis")


def test_verify_without_a_network_says_authorship_was_not_checked(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    store = ChainStore.open(data_dir, LOW_DIFFICULTY)
    for block in extend(store.blocks()[0], ["a", "b"], key=other_key()):
        store.append(block)
    store.close()
    result = verify(data_dir)
    assert result.returncode == 0, result.stderr
    assert "open network: authorship not checked" in result.stdout


def test_verify_with_a_malformed_network_copy_is_one_line(tmp_path: Path, easy: Organizer) -> None:
    member_store(tmp_path / "d", easy, [fixed_key()], [fixed_key()])
    (tmp_path / "d" / files.NETWORK_COPY).write_text("{}")
    fails_with(verify(tmp_path / "d"), "network.json", "not a votechain-network/1 file")



# ================================================================ verify's worker pool, in process


@pytest.mark.parametrize("workers", [1, 2])
def test_the_pool_gives_the_sequential_verdict_on_a_non_member(
    easy: Organizer, workers: int
) -> None:
    # Rule 6 runs in the parent while the helpers check signatures: the
    # verdict must still be Chain.verified's, naming the same block.
    member, outsider = fixed_key(), other_key()
    blocks = [easy.network.genesis]
    for i, key in enumerate([member, member, outsider, member, member]):
        blocks += extend(blocks[-1], [f"p{i}"], key=key, timestamp=T0 + i)
    members = easy.members()
    members.admit(easy.certify(member, "station"))
    with pytest.raises(InvalidBlock) as sequential:
        Chain.verified(blocks, difficulty=LOW_DIFFICULTY, now_ms=T0 + 10**9, members=members)
    with pytest.raises(NotAMember) as pooled:
        verify_module.verify_blocks(blocks, difficulty=LOW_DIFFICULTY, now_ms=T0 + 10**9,
                                    workers=workers, chunk=2, min_parallel=0, members=members)
    assert str(pooled.value) == str(sequential.value)
    assert pooled.value.block == blocks[3]
