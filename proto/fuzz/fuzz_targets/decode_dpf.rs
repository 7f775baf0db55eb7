//! Fuzzes the DPF datagram decoder: it must never panic, and whatever it
//! accepts must re-encode to the very same bytes (the encoding is canonical).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, msg)) = proto::dpf::decode(data) {
        let again = proto::dpf::encode(&msg, header.request_id).expect("decoded message re-encodes");
        assert_eq!(again, data);
    }
});
