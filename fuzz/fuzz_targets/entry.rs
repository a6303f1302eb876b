//! Entry decoding: any bytes (from Redis, say) decode or are refused, and
//! what decodes encodes back to the same entry.
#![no_main]

use bytes::Bytes;
use freshgate::store::entry::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(Bytes::copy_from_slice(data)) {
        let again = Entry::decode(entry.encode().expect("a decoded entry fits")).unwrap();
        assert_eq!(again, entry);
    }
});
