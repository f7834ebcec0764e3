//! How the run store's keys are laid out. Each byte of a key costs sled
//! about twenty on disk (a one-task run took 1,585 bytes of disk with the
//! string keys of versions before 2026-12, up to 60 bytes each, and 909 with
//! these; see docs/benchmarks.md, "Compact keys"), so keys hold what they
//! order by and nothing twice:
//!
//! - a run is keyed by its id's 16 bytes (a UUID, as the engine makes them);
//!   another id (tests, hand-made) by [`OTHER_ID`] and its text, NUL-ended;
//! - its events by the run's key and their first sequence number;
//! - an index entry by a prefix (one byte for a status, eight of a hash for a
//!   workflow), the run's creation time (ms, 48 bits) and the rest of its id.
//!   A version-7 UUID already starts with those 48 bits of time: an id made
//!   at the run's `created_at` (as the engine makes them) adds its other ten
//!   bytes; any other id adds a zero byte and its run key.

use crate::state::{Millis, RunStatus};

/// What a run key of an id that is not a UUID starts with: longer than a
/// UUID's 16 bytes, so no such key is ever one.
const OTHER_ID: [u8; 17] = [0; 17];

/// The bytes of an index entry's time.
const TIME_LEN: usize = 6;

/// The largest time an index entry holds (a later one, year 10889, is held
/// as this).
const MAX_TIME: Millis = (1 << (8 * TIME_LEN)) - 1;

fn uuid(id: &str) -> Option<uuid::Uuid> {
    // Only the form the engine writes (lower-case, hyphenated) reads back
    // as the same text.
    uuid::Uuid::try_parse(id).ok().filter(|u| {
        u.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            == id
    })
}

/// A run's key in the runs' tree, and what its events' keys start with.
pub fn run_key(id: &str) -> Vec<u8> {
    match uuid(id) {
        Some(u) => u.as_bytes().to_vec(),
        None => {
            let mut k = Vec::with_capacity(OTHER_ID.len() + id.len() + 1);
            k.extend_from_slice(&OTHER_ID);
            k.extend_from_slice(id.as_bytes());
            k.push(0);
            k
        }
    }
}

/// The id a run key names.
fn id_of(key: &[u8]) -> Option<String> {
    if let Ok(bytes) = <[u8; 16]>::try_from(key) {
        return Some(uuid::Uuid::from_bytes(bytes).to_string());
    }
    let text = key.strip_prefix(&OTHER_ID)?.strip_suffix(&[0])?;
    String::from_utf8(text.to_vec()).ok()
}

/// The key of a run's events batch that starts at `seq`.
pub fn event_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = run_key(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn time(ts: Millis) -> [u8; TIME_LEN] {
    let be = ts.min(MAX_TIME).to_be_bytes();
    let mut t = [0; TIME_LEN];
    t.copy_from_slice(&be[8 - TIME_LEN..]);
    t
}

/// The first key under `prefix` of a run created at `ts` or later.
pub fn from_time(prefix: &[u8], ts: Millis) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&time(ts));
    k
}

/// A run's entry in an index, under `prefix`.
pub fn index_key(prefix: &[u8], created_at: Millis, id: &str) -> Vec<u8> {
    let mut k = from_time(prefix, created_at);
    let run = run_key(id);
    // A version-7 UUID made at `created_at`: its time is the entry's.
    if run.len() == 16 && run[..TIME_LEN] == k[prefix.len()..] && run[TIME_LEN] >> 4 == 7 {
        k.extend_from_slice(&run[TIME_LEN..]);
    } else {
        k.push(0);
        k.extend_from_slice(&run);
    }
    k
}

/// An index entry's time and run id, from what follows its prefix.
pub fn entry(rest: &[u8]) -> Option<(Millis, String)> {
    let (t, id) = rest.split_first_chunk::<TIME_LEN>()?;
    let mut be = [0; 8];
    be[8 - TIME_LEN..].copy_from_slice(t);
    let ts = Millis::from_be_bytes(be);
    let id = match id.split_first()? {
        (0, run) => id_of(run)?,
        _ => id_of(&[&t[..], id].concat())?,
    };
    Some((ts, id))
}

/// The status index's prefix for `status`.
pub fn status_prefix(status: RunStatus) -> [u8; 1] {
    [match status {
        RunStatus::Running => b'r',
        RunStatus::Succeeded => b's',
        RunStatus::Failed => b'f',
        RunStatus::Cancelled => b'c',
    }]
}

/// The workflow index's prefix for `workflow`: eight bytes of a hash of its
/// name (two names may share it: a listing checks the run's workflow).
pub fn workflow_prefix(workflow: &str) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, workflow.as_bytes());
    let mut p = [0; 8];
    p.copy_from_slice(&digest.as_ref()[..8]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_at(ms: Millis) -> String {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        uuid::Uuid::new_v7(ts).to_string()
    }

    #[test]
    fn an_id_made_at_its_runs_creation_adds_ten_bytes_to_an_index_entry() {
        let at = 1_796_092_216_922;
        let id = v7_at(at);
        assert_eq!(run_key(&id).len(), 16);
        let k = index_key(b"s", at, &id);
        assert_eq!(k.len(), 1 + 16);
        assert_eq!(entry(&k[1..]), Some((at, id.clone())));
        // Made at another time, it is whole after the entry's time.
        let k = index_key(b"s", at + 1, &id);
        assert_eq!(k.len(), 1 + 6 + 1 + 16);
        assert_eq!(entry(&k[1..]), Some((at + 1, id)));
    }

    #[test]
    fn other_ids_read_back_and_never_share_a_prefix() {
        for id in [
            "r1",
            "",
            "0123456789abcdef",
            "DD2C3D6E-0E8A-7A6B-8E4C-1B2A3C4D5E6F",
        ] {
            let k = index_key(b"r", 42, id);
            assert_eq!(entry(&k[1..]), Some((42, id.to_string())), "{id:?}");
        }
        // One run's events are not another's.
        let (a, b) = (run_key("r1"), run_key("r10"));
        assert!(!b.starts_with(&a));
        assert!(!event_key("r10", 0).starts_with(&a));
    }

    #[test]
    fn entries_order_by_time_whatever_the_id() {
        let ids = [v7_at(5_000), "x".to_string(), v7_at(2_000)];
        let mut keys: Vec<(Vec<u8>, Millis)> =
            [(3_000, &ids[0]), (4_000, &ids[1]), (2_000, &ids[2])]
                .into_iter()
                .map(|(at, id)| (index_key(b"s", at, id), at))
                .collect();
        keys.sort();
        let times: Vec<Millis> = keys.iter().map(|(_, at)| *at).collect();
        assert_eq!(times, [2_000, 3_000, 4_000]);
        assert!(from_time(b"s", 3_000) <= keys[1].0);
        assert!(from_time(b"s", 3_001) > keys[1].0);
    }

    #[test]
    fn a_damaged_entry_reads_as_none() {
        for rest in [
            &[][..],
            &[0; 5][..],
            &[0, 0, 0, 0, 0, 1][..],
            &[0, 0, 0, 0, 0, 1, 0x70, 1][..],
        ] {
            assert_eq!(entry(rest), None, "{rest:?}");
        }
    }
}
