//! Fuzzes the pcapng block walker that `sidecap repair` and the uploader run over `.pcapng`
//! files left by a killed capture (untrusted input): it must never panic, its accounting must
//! hold, and the valid prefix it reports must walk clean on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Compiled in by path, like pcap_walker: the walker needs only std and thiserror (and the pcap
// walker beside it), not sidecap's dependency tree.
#[path = "../../src/pcapfile.rs"]
#[allow(dead_code)]
mod pcapfile;
#[path = "../../src/pcapng.rs"]
#[allow(dead_code)]
mod pcapng;
use pcapng::scan_extra;

fuzz_target!(|data: &[u8]| {
    if let Ok((s, _)) = scan_extra(data) {
        assert!(s.valid_len <= s.total_len);
        assert_eq!(s.total_len, data.len() as u64);
        if s.valid_len > 0 {
            let (again, _) =
                scan_extra(&data[..s.valid_len as usize]).expect("valid prefix still has a header");
            assert!(again.is_clean());
            assert_eq!(again.packets, s.packets);
        }
    }
});
