fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    build_support::compile_protos(&proto_root, "pulse_descriptor.bin")
}
