//! Embeds the admin dashboard (`admin-ui/dist`, built by `cargo xtask dashboard`) into the
//! binary, each file with gzip and brotli versions compressed here, once, so the server only
//! picks one. Without a built dashboard the binary still builds and `/admin/` says so.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Files smaller than this are served as they are.
const COMPRESS_FROM: usize = 512;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../admin-ui/dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut table = String::from(
        "/// The dashboard's files, by path under `/admin/`.\npub static ASSETS: &[Asset] = &[\n",
    );
    if dist.join("index.html").is_file() {
        let mut all = Vec::new();
        files(&dist, &mut all);
        for (i, file) in all.iter().enumerate() {
            let rel = file.strip_prefix(&dist).expect("inside dist").to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(file).expect("read a dashboard file");
            // The file itself is included; only its compressed copies are written here.
            let raw = file.canonicalize().expect("a dashboard file's path");
            let compressible =
                !matches!(file.extension().and_then(|e| e.to_str()), Some("png" | "ico" | "woff2"));
            let (gzip, brotli) = if compressible && bytes.len() >= COMPRESS_FROM {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                gz.write_all(&bytes).expect("gzip");
                let gz = gz.finish().expect("gzip");
                let mut br = Vec::new();
                let params =
                    brotli::enc::BrotliEncoderParams { quality: 11, lgwin: 22, ..Default::default() };
                brotli::BrotliCompress(&mut bytes.as_slice(), &mut br, &params).expect("brotli");
                let (g, b) = (out.join(format!("asset{i}.gz")), out.join(format!("asset{i}.br")));
                std::fs::write(&g, gz).expect("write");
                std::fs::write(&b, br).expect("write");
                (
                    format!("Some(include_bytes!({:?}))", g.display().to_string()),
                    format!("Some(include_bytes!({:?}))", b.display().to_string()),
                )
            } else {
                ("None".to_owned(), "None".to_owned())
            };
            table.push_str(&format!(
                "    Asset {{ path: {rel:?}, raw: include_bytes!({:?}), gzip: {gzip}, brotli: {brotli} }},\n",
                raw.display().to_string()
            ));
        }
    }
    table.push_str("];\n");
    std::fs::write(out.join("dashboard.rs"), table).expect("write dashboard.rs");
}
