//! How a run's records (its summary, its events) are packed on disk: JSON
//! compressed with LZ4 against a dictionary of what such records look like.
//!
//! A one-task run's summary is ~700 bytes of JSON of which all but its ids,
//! times and values is the same field names and boilerplate in every run;
//! against the dictionary it packs to about a quarter, for a few microseconds
//! either way. A packed value starts with its format's tag (never `{` or
//! `[`, with which the plain JSON of older versions starts, still read as
//! is), then the JSON's length (u32, little-endian), then the LZ4 block. A
//! value that would not get smaller is stored plain.

use std::borrow::Cow;

/// The tag of a value packed against `DICT_V1`.
const TAG_V1: u8 = 1;

/// What the first format's records are compressed against. **Never change
/// it**: every value tagged `TAG_V1` is read with exactly these bytes. A
/// better dictionary is a new constant with a new tag, both kept.
const DICT_V1: &[u8] = br#"{"type":"RunCancelled","reason":"","at":17},{"type":"RunFailed","task":null,"error":"","status":null,"at":17},{"type":"TaskCancelled","reason":"","at":17},{"type":"CallbackCompleted","task":"","attempt":1,"output":null,"error":"","at":17},{"type":"CallbackNotified","task":"","attempt":1,"at":17},{"type":"CallbackIssued","task":"","attempt":1,"token":"","deadline":17,"at":17},{"type":"TimerFired","task":"","at":17},{"type":"TasksAdded","parent":"","tasks":{},"output":"","scope_inputs":null,"concurrency":1,"at":17},{"type":"RetryScheduled","task":"","attempt":1,"due":17,"at":17},{"type":"TaskFailed","task":"","attempt":1,"error":"","status":500,"retryable":true,"at":17},"wake_at":17,"preserved":{},"retry_of":"","status":"cancelled","status":"failed","error":{"task":"","message":"","status":502},"output_headers":{"content-type":"application/json"},"Content-Type":"application/json","method":"GET","Accept-Encoding":"gzip, deflate, br","Connection":"keep-alive","X-Forwarded-For":"127.0.0.1","Authorization":"","Cookie":"",{"run_id":"","workflow":"","version":1,"spec_ref":"","type":"RunStarted","input":{},"at":17,"body_is_default":true},{"id":"","workflow":"","version":1,"status":"succeeded","created_at":17,"finished_at":17,"input":{"default":"","headers":{"Accept":"*/*","Content-Length":"0","Content-Type":"text/plain","Host":"127.0.0.1:8888","User-Agent":""},"method":"POST","query":{}},"output":null,"error":null,"retry_of":null,"body_is_default":true,"events":[{"spec_ref":"","type":"RunStarted"},{"type":"TaskDispatched","task":"","attempt":1,"key":"","inputs":{},"at":17},{"type":"TaskSucceeded","task":"","attempt":1,"output":null,"headers":{},"at":17},{"type":"RunSucceeded"}]}"#;

/// `json` as stored: packed, or as it is when packing would not shrink it.
pub fn pack(json: Vec<u8>) -> Vec<u8> {
    let Ok(len) = u32::try_from(json.len()) else {
        return json;
    };
    let block = lz4_flex::block::compress_with_dict(&json, DICT_V1);
    if block.len() + 5 >= json.len() {
        return json;
    }
    let mut out = Vec::with_capacity(block.len() + 5);
    out.push(TAG_V1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&block);
    out
}

/// A stored value's JSON: unpacked, or borrowed when it was stored plain.
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    match stored.split_first() {
        Some((&TAG_V1, rest)) => {
            let (len, block) = rest
                .split_first_chunk::<4>()
                .ok_or("a packed record is cut short")?;
            let len = u32::from_le_bytes(*len) as usize;
            // LZ4 expands a byte at most 255 times: a larger length is damage
            // (and not an allocation to make).
            if len > block.len().saturating_mul(255) + DICT_V1.len() {
                return Err(format!(
                    "a packed record names {len} bytes in {}",
                    block.len()
                ));
            }
            let json = lz4_flex::block::decompress_with_dict(block, len, DICT_V1)
                .map_err(|e| format!("a packed record does not unpack: {e}"))?;
            if json.len() != len {
                return Err(format!(
                    "a packed record unpacks to {} bytes, not the {len} it names",
                    json.len()
                ));
            }
            Ok(Cow::Owned(json))
        }
        Some((b'{' | b'[', _)) => Ok(Cow::Borrowed(stored)),
        Some((tag, _)) => Err(format!("a record in an unknown format (tag {tag})")),
        None => Err("an empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{"id":"01a22f70-465a-7478-b199-76347e7544af","workflow":"fp","version":1,"status":"succeeded","created_at":1796092216922,"finished_at":1796092216922,"input":{"default":"hello","headers":{"Content-Length":"5","Content-Type":"text/plain","Host":"127.0.0.1:18888"},"method":"POST","query":{}},"output":null,"error":null,"retry_of":null,"body_is_default":true,"events":[{"spec_ref":"c1604f8c10cd78f28177ca2131b3f66d","type":"RunStarted"},{"type":"TaskDispatched","task":"t0","attempt":1,"key":"01a22f70-465a-7478-b199-76347e7544af/t0/1","inputs":{},"at":1796092216922},{"type":"TaskSucceeded","task":"t0","attempt":1,"output":null,"headers":{},"at":1796092216922},{"type":"RunSucceeded"}]}"#;

    #[test]
    fn a_summary_packs_to_a_fraction_and_back() {
        let packed = pack(SUMMARY.as_bytes().to_vec());
        assert_eq!(packed[0], TAG_V1);
        assert!(
            packed.len() * 5 < SUMMARY.len() * 2,
            "{} bytes packed from {}",
            packed.len(),
            SUMMARY.len()
        );
        assert_eq!(unpack(&packed).unwrap(), SUMMARY.as_bytes());
    }

    #[test]
    fn plain_json_reads_as_it_is() {
        // What older versions wrote, and what packing would not shrink.
        for plain in [&br#"{"a":1}"#[..], b"[1]"] {
            assert_eq!(pack(plain.to_vec()), plain);
            assert!(matches!(unpack(plain).unwrap(), Cow::Borrowed(b) if b == plain));
        }
    }

    /// A record packed by the first version stays readable: the dictionary
    /// and the format are what these bytes were written with.
    #[test]
    fn a_record_packed_by_the_first_format_still_unpacks() {
        let packed: &[u8] = include_bytes!("../tests/data/packed-summary-v1.bin");
        assert_eq!(unpack(packed).unwrap(), SUMMARY.as_bytes());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let packed = pack(SUMMARY.as_bytes().to_vec());
        for damaged in [
            &packed[..3],
            &packed[..packed.len() / 2],
            &[TAG_V1, 0xff, 0xff, 0xff, 0x7f, 0x10][..],
            &[7, b'{'][..],
            &[][..],
        ] {
            assert!(unpack(damaged).is_err(), "{damaged:?}");
        }
    }
}
