//! Protobuf code generation for build scripts, with no system `protoc`.
//!
//! `protox` parses the `.proto` files into a descriptor set, `tonic-prost-build`
//! generates messages, clients and servers from it, and the encoded set is written
//! to `OUT_DIR/<descriptor_name>` so that servers can offer gRPC reflection.

use std::{
    env,
    path::{Path, PathBuf},
};

use prost::Message;

/// Compiles every `.proto` file under `proto_root` into `OUT_DIR`, with the
/// encoded `FileDescriptorSet` in `OUT_DIR/<descriptor_name>`.
pub fn compile_protos(proto_root: &Path, descriptor_name: &str) -> Result<(), Box<dyn std::error::Error>> {
    compile_protos_where(proto_root, descriptor_name, |_| true)
}

/// [`compile_protos`] for the files whose path relative to `proto_root` (e.g.
/// `pulse/admin/v1/dead_letters.proto`) `keep` accepts, so that a crate
/// generates only the packages it serves and two descriptor sets never
/// define the same file.
pub fn compile_protos_where(
    proto_root: &Path,
    descriptor_name: &str,
    keep: impl Fn(&Path) -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut files = proto_files(proto_root)?;
    files.retain(|file| file.strip_prefix(proto_root).is_ok_and(&keep));
    // tonic-prost-build 0.14 prints no rerun-if-changed when given a descriptor set.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(descriptor_name), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}

/// All `.proto` files below `root`, sorted so generated output is stable.
fn proto_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
