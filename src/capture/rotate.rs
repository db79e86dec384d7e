//! When to start a new file: the pure rotation policy (size, time), kept apart from the I/O so
//! it can be tested on its own.

use std::time::{Duration, Instant};

use crate::pcapfile::FILE_HEADER_LEN;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotatePolicy {
    pub size: Option<u64>,
    pub interval: Option<Duration>,
}

impl RotatePolicy {
    /// Would a record of `record_len` bytes push a file of `file_len` bytes past the size limit?
    /// A file always takes at least one record, so a record larger than the limit still lands.
    #[inline]
    pub fn size_exceeded(&self, file_len: u64, record_len: u64) -> bool {
        match self.size {
            Some(limit) => file_len > FILE_HEADER_LEN as u64 && file_len + record_len > limit,
            None => false,
        }
    }

    /// When the file opened at `opened` is due for time rotation.
    pub fn deadline(&self, opened: Instant) -> Option<Instant> {
        self.interval.map(|i| opened + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_never_rotates() {
        assert!(!RotatePolicy::default().size_exceeded(u64::MAX / 2, 1000));
    }

    #[test]
    fn files_stay_under_the_limit_and_every_record_lands_once() {
        // Property: splitting any record sequence by the policy puts each record in exactly one
        // file, and a file exceeds the limit only when it holds a single oversized record.
        let mut seed = 7u64;
        for limit in [100u64, 1000, 4096, 65_536] {
            let p = RotatePolicy {
                size: Some(limit),
                interval: None,
            };
            let mut files: Vec<Vec<u64>> = vec![vec![]];
            let mut len = FILE_HEADER_LEN as u64;
            let mut total = 0;
            for _ in 0..5000 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let rec = 16 + (seed >> 33) % (limit / 2 + 200);
                if p.size_exceeded(len, rec) {
                    files.push(vec![]);
                    len = FILE_HEADER_LEN as u64;
                }
                files.last_mut().unwrap().push(rec);
                len += rec;
                total += 1;
            }
            assert_eq!(files.iter().map(Vec::len).sum::<usize>(), total);
            for f in &files {
                let size = FILE_HEADER_LEN as u64 + f.iter().sum::<u64>();
                assert!(
                    size <= limit || f.len() == 1,
                    "limit {limit}: file of {size} with {} records",
                    f.len()
                );
                assert!(!f.is_empty());
            }
        }
    }

    #[test]
    fn time_deadline() {
        let now = Instant::now();
        let p = RotatePolicy {
            size: None,
            interval: Some(Duration::from_secs(5)),
        };
        assert_eq!(p.deadline(now), Some(now + Duration::from_secs(5)));
        assert_eq!(RotatePolicy::default().deadline(now), None);
    }
}
