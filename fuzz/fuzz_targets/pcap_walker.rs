//! Fuzzes the pcap record walker that `sidecap repair` and the uploader run over files left by
//! a killed capture (untrusted input): it must never panic, and its accounting must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The walker needs only std and thiserror, so its source is compiled in directly rather than through the sidecap
// crate: the sanitizer build then covers libFuzzer and this one file, not sidecap's whole
// dependency tree (tokio, reqwest, rustls, ring, …), which took minutes of every CI run.
#[path = "../../src/pcapfile.rs"]
#[allow(dead_code)]
mod pcapfile;
use pcapfile::scan;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = scan(data) {
        assert!(s.valid_len <= s.total_len);
        assert_eq!(s.total_len, data.len() as u64);
        let again = scan(&data[..s.valid_len as usize]).expect("valid prefix still has a header");
        assert!(again.is_clean());
        assert_eq!(again.packets, s.packets);
    }
});
