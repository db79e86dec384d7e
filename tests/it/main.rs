//! One integration-test binary: every test runs the real `sidecap` executable against real
//! things (libpcap on loopback or veths in namespaces we create, real HTTP servers on
//! 127.0.0.1, tshark/capinfos reading what we wrote). Run as root.

mod capture;
mod docs;
mod faults;
mod garage;
mod helpers;
mod laptop;
mod nginx;
mod ownports;
mod pcapng;
mod receiver;
mod report;
mod s3;
mod security;
mod snapshot;
mod upload;
