fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: a fresh machine needs no system protobuf compiler.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::TunnelCodec")
        .compile_protos(&["proto/tunnel.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/tunnel.proto");
    Ok(())
}
