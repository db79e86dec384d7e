//! sidecap: a PID-1-safe packet capture agent for Kubernetes Pods, and the paired uploader that
//! gets the capture out before the Pod is gone.
//!
//! The data path reads in one direction: kernel ring -> capture thread -> writer thread -> files
//! on the volume -> uploader -> webhook. The file contract in [`files`] is the only
//! interface between capture and upload, which is what lets them live in different containers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod capture;
pub mod cli;
pub mod config;
pub mod exit;
pub mod files;
pub mod logging;
pub mod metrics;
pub mod ownports;
pub mod pcapfile;
pub mod pcapng;
pub mod process;
pub mod repair;
pub mod snapshot;
pub mod term;
pub mod upload;
pub mod volume;
