//! Fuzzes the doorbell record decoder (bytes other local processes send a
//! managed listener): it must never panic, and whatever it accepts must
//! re-encode to the very same 42 bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::gcb::doorbell::{Record, RECORD_LEN};

fuzz_target!(|data: &[u8]| {
    // A doorbell is read as exactly RECORD_LEN bytes; shorter inputs are
    // zero-padded so the fuzzer's small early inputs still reach the decoder.
    let mut record_bytes = [0u8; RECORD_LEN];
    let n = data.len().min(RECORD_LEN);
    record_bytes[..n].copy_from_slice(&data[..n]);
    if let Some(record) = Record::decode(&record_bytes) {
        assert_eq!(record.encode(), record_bytes);
    }
});
