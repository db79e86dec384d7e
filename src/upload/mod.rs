//! The paired uploader (`sidecap uploader`, `sidecap upload`). Being built: see issue 3.

pub mod args;

use crate::exit::ExitStatus;
use crate::process::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the uploader is not built yet")]
    NotBuilt,
}

impl ExitStatus for UploadError {
    fn exit_code(&self) -> u8 {
        crate::exit::RUNTIME
    }
}

/// `sidecap upload`: the preStop path.
pub fn run_upload(_args: &args::UploadArgs, _shutdown: Shutdown) -> Result<(), UploadError> {
    Err(UploadError::NotBuilt)
}

/// `sidecap uploader`: the long-running sidecar.
pub fn run_uploader(_args: &args::UploaderArgs, _shutdown: Shutdown) -> Result<(), UploadError> {
    Err(UploadError::NotBuilt)
}
