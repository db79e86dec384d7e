//! Command-line flags of the uploader subcommands.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct UploadArgs {}

#[derive(Args, Debug, Clone)]
pub struct UploaderArgs {}
