//! The database's part of a backup: every key of every sled tree, as read
//! while the server runs, then the engine's writes made during that reading,
//! in order (`SledStore::export`). Restored in that order into an empty
//! database, they leave each key as it was when the reading ended.
//!
//! The stream: `MAGIC`, then records, then an end. A record is an operation
//! (1 insert, 0 removal), the tree's name (u16 LE length, bytes), the key
//! (u32 LE length, bytes) and, for an insert, the value (u32 LE length,
//! bytes). The end is 0xFF and the number of records before it (u64 LE): a
//! stream without it was cut short, and is refused.

use std::collections::HashMap;
use std::io::{self, Read, Write};

const MAGIC: &[u8] = b"fusion-db-records 1\n";
const INSERT: u8 = 1;
const REMOVE: u8 = 0;
const END: u8 = 0xFF;

/// What a backup's database part holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records in all (the trees' keys, then the writes made meanwhile).
    pub records: u64,
    /// Of those, writes made while the trees were read.
    pub during: u64,
}

/// Writes the records of a backup's database part.
pub struct Writer<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Writer<W>> {
        out.write_all(MAGIC)?;
        Ok(Writer { out, records: 0 })
    }

    pub fn insert(&mut self, tree: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
        self.head(INSERT, tree, key)?;
        self.out.write_all(&len32(value.len())?.to_le_bytes())?;
        self.out.write_all(value)
    }

    pub fn remove(&mut self, tree: &[u8], key: &[u8]) -> io::Result<()> {
        self.head(REMOVE, tree, key)
    }

    fn head(&mut self, op: u8, tree: &[u8], key: &[u8]) -> io::Result<()> {
        let name = u16::try_from(tree.len())
            .map_err(|_| io::Error::other("a tree's name is longer than 65,535 bytes"))?;
        self.out.write_all(&[op])?;
        self.out.write_all(&name.to_le_bytes())?;
        self.out.write_all(tree)?;
        self.out.write_all(&len32(key.len())?.to_le_bytes())?;
        self.out.write_all(key)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end and gives back the output and the records written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(&[END])?;
        self.out.write_all(&self.records.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.records))
    }
}

fn len32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("a key or value is larger than 4 GiB"))
}

fn damaged(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the backup's database part is damaged: {why}"),
    )
}

/// Applies the records read from `input` to `db`, which should be empty, and
/// flushes it. Answers how many there were; a stream cut short, damaged or
/// of another format is an `InvalidData` error (what was applied stays:
/// restore into a directory of its own and remove it on an error).
pub fn restore(db: &sled::Db, input: impl Read) -> io::Result<u64> {
    let mut trees: HashMap<Vec<u8>, sled::Tree> = HashMap::new();
    let records = read_records(input, &mut |name, key, value| {
        let tree = match trees.get(&name) {
            Some(t) => t,
            None => {
                let t = db.open_tree(&name).map_err(io::Error::other)?;
                trees.entry(name).or_insert(t)
            }
        };
        match value {
            Some(v) => tree.insert(key, v).map(|_| ()),
            None => tree.remove(key).map(|_| ()),
        }
        .map_err(io::Error::other)
    })?;
    db.flush().map_err(io::Error::other)?;
    Ok(records)
}

/// Reads the records of `input` through to their end, applying none: how
/// many there are, or why the stream is no whole backup's (as `restore`).
pub fn check(input: impl Read) -> io::Result<u64> {
    read_records(input, &mut |_, _, _| Ok(()))
}

/// A record's tree, key, and value (`None`: a removal).
type Apply<'a> = dyn FnMut(Vec<u8>, Vec<u8>, Option<Vec<u8>>) -> io::Result<()> + 'a;

fn read_records(input: impl Read, apply: &mut Apply<'_>) -> io::Result<u64> {
    let mut input = io::BufReader::with_capacity(1 << 20, input);
    let mut magic = vec![0; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| damaged("it is empty or cut short"))?;
    if magic != MAGIC {
        return Err(damaged("it does not start as Fusion's records do"));
    }
    let mut records = 0u64;
    loop {
        let mut op = [0u8; 1];
        input.read_exact(&mut op).map_err(cut_after(records))?;
        if op[0] == END {
            let mut n = [0u8; 8];
            input.read_exact(&mut n).map_err(cut_after(records))?;
            if u64::from_le_bytes(n) != records {
                return Err(damaged(format!(
                    "its end counts {} records where {records} came before it",
                    u64::from_le_bytes(n)
                )));
            }
            break;
        }
        if op[0] != INSERT && op[0] != REMOVE {
            return Err(damaged(format!("record {records} has no known operation")));
        }
        let name = read_bytes(&mut input, 2).map_err(cut_after(records))?;
        let key = read_bytes(&mut input, 4).map_err(cut_after(records))?;
        let value = match op[0] {
            INSERT => Some(read_bytes(&mut input, 4).map_err(cut_after(records))?),
            _ => None,
        };
        apply(name, key, value)?;
        records += 1;
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(damaged("bytes follow its end"));
    }
    Ok(records)
}

fn cut_after(records: u64) -> impl FnOnce(io::Error) -> io::Error {
    move |_| damaged(format!("it is cut short after {records} records"))
}

/// A length (`width` bytes, LE) and that many bytes.
fn read_bytes(input: &mut impl Read, width: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len[..width])?;
    let len = u32::from_le_bytes(len) as usize;
    // Read in steps, so that a damaged length costs no huge allocation first.
    let mut out = Vec::with_capacity(len.min(1 << 20));
    input.take(len as u64).read_to_end(&mut out)?;
    if out.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, db)
    }

    /// A tree, a key, and a value (`None`: a removal).
    type Op<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    fn stream(ops: &[Op<'_>]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        for (tree, key, value) in ops {
            match value {
                Some(v) => w.insert(tree.as_bytes(), key, v).unwrap(),
                None => w.remove(tree.as_bytes(), key).unwrap(),
            }
        }
        w.finish().unwrap().0
    }

    #[test]
    fn records_restore_in_order_into_their_trees() {
        let bytes = stream(&[
            ("a", b"k1", Some(b"old")),
            ("a", b"k2", Some(b"gone")),
            ("__sled__default", b"d", Some(b"default")),
            ("b", b"k1", Some(b"")),
            // What a write made while the trees were read says last.
            ("a", b"k1", Some(b"new")),
            ("a", b"k2", None),
        ]);
        assert_eq!(check(&bytes[..]).unwrap(), 6);
        let (_dir, db) = fresh();
        assert_eq!(restore(&db, &bytes[..]).unwrap(), 6);
        let a = db.open_tree("a").unwrap();
        assert_eq!(a.get("k1").unwrap().unwrap().as_ref(), b"new");
        assert!(a.get("k2").unwrap().is_none());
        assert_eq!(db.get("d").unwrap().unwrap().as_ref(), b"default");
        assert_eq!(
            db.open_tree("b")
                .unwrap()
                .get("k1")
                .unwrap()
                .unwrap()
                .as_ref(),
            b""
        );
    }

    #[test]
    fn a_stream_cut_short_or_damaged_is_refused() {
        let bytes = stream(&[("a", b"k", Some(b"v")), ("a", b"l", Some(b"w"))]);
        for cut in [0, 5, MAGIC.len() + 3, bytes.len() - 1] {
            let (_dir, db) = fresh();
            let e = restore(&db, &bytes[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut at {cut}: {e}");
            assert!(check(&bytes[..cut]).is_err());
        }
        // An end that counts otherwise (a record lost in the middle).
        let mut wrong = bytes.clone();
        let at = wrong.len() - 8;
        wrong[at] = 1;
        let (_dir, db) = fresh();
        let e = restore(&db, &wrong[..]).unwrap_err().to_string();
        assert!(e.contains("counts 1 records where 2"), "{e}");
        // Something else altogether.
        let (_dir, db) = fresh();
        let e = restore(&db, &b"PK\x03\x04 a zip"[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
