//! Fuzzes the NAT-PMP decoders, a gateway's (requests) and a client's
//! (responses): they must never panic; an accepted request re-encodes to a
//! message that decodes the same (the reserved field is ignored on
//! receipt), and an accepted response re-encodes to the very same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::natpmp;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = natpmp::decode_request(data) {
        let again = natpmp::encode_request(&req);
        assert_eq!(natpmp::decode_request(&again), Ok(req));
    }
    if let Ok(resp) = natpmp::decode_response(data) {
        assert_eq!(natpmp::encode_response(&resp), data);
    }
});
