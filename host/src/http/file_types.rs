//! What a file is, from its name, as Boxel decides it: the content type it
//! is served with, whether it is an executable module (and the extensions a
//! module specifier may leave out), and the `FileDef` type of its
//! `file-meta` document.

/// Boxel's executable extensions, in the order a bare specifier tries them
/// (then `.json`, for card instances).
pub(super) const EXECUTABLE_EXTENSIONS: [&str; 4] = [".js", ".gjs", ".ts", ".gts"];

/// Boxel's base realm, where the `FileDef` types live.
const BASE_REALM: &str = "https://cardstack.com/base/";

/// The extension of the last path segment, lowercased and with its dot.
fn extension(name: &str) -> Option<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rfind('.').map(|i| last[i..].to_ascii_lowercase())
}

/// Whether the path already names a module by its executable extension.
pub(super) fn has_executable_extension(path: &str) -> bool {
    extension(path).is_some_and(|e| EXECUTABLE_EXTENSIONS.contains(&e.as_str()))
}

/// The content type a file is served with: Boxel's own types for card
/// modules, else the registered type of the extension, else
/// `application/octet-stream`.
pub(super) fn content_type(name: &str) -> String {
    match extension(name).as_deref() {
        Some(".gts") => "text/typescript+glimmer".into(),
        Some(".gjs") => "text/javascript+glimmer".into(),
        Some(".ts") => "text/typescript".into(),
        Some(_) => mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream").to_string(),
        None => "application/octet-stream".into(),
    }
}

/// The content type for a header when the body is the stored text: text
/// types say their charset.
pub(super) fn text_content_type(name: &str) -> String {
    let essence = content_type(name);
    let textual = essence.starts_with("text/")
        || ["+json", "+xml", "+glimmer"].iter().any(|s| essence.ends_with(s))
        || ["application/json", "application/javascript", "application/xml", "application/toml", "application/yaml"].contains(&essence.as_str());
    if textual {
        format!("{essence}; charset=utf-8")
    } else {
        essence
    }
}

/// `(module, name)` of the `FileDef` type Boxel gives a file of this name.
pub(super) fn file_def(name: &str) -> (String, &'static str) {
    // Boxel's table of FileDef types by extension: data, one arm each.
    let (module, def) = match extension(name).as_deref() {
        Some(".md" | ".markdown") => ("markdown-file-def", "MarkdownDef"),
        Some(".html" | ".htm") => ("html-file-def", "HtmlDef"),
        Some(".png") => ("png-image-def", "PngDef"),
        Some(".jpg" | ".jpeg") => ("jpg-image-def", "JpgDef"),
        Some(".svg") => ("svg-image-def", "SvgDef"),
        Some(".gif") => ("gif-image-def", "GifDef"),
        Some(".webp") => ("webp-image-def", "WebpDef"),
        Some(".avif") => ("avif-image-def", "AvifDef"),
        Some(".ts") => ("ts-file-def", "TsFileDef"),
        Some(".gts") => ("gts-file-def", "GtsFileDef"),
        Some(".txt" | ".text") => ("text-file-def", "TextFileDef"),
        Some(".json") => ("json-file-def", "JsonFileDef"),
        Some(".csv") => ("csv-file-def", "CsvFileDef"),
        Some(".pdf") => ("pdf-file-def", "PdfDef"),
        Some(".mp3") => ("mp3-audio-def", "Mp3Def"),
        Some(".wav") => ("wav-audio-def", "WavDef"),
        Some(".mp4" | ".m4v") => ("mp4-video-def", "Mp4Def"),
        Some(".webm") => ("webm-video-def", "WebmDef"),
        Some(".zip") => ("zip-file-def", "ZipDef"),
        _ => ("file-api", "FileDef"),
    };
    (format!("{BASE_REALM}{module}"), def)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One assertion per case (the same shape as every table test here).
    #[test]
    fn types_follow_boxel() {
        assert_eq!(content_type("person.gts"), "text/typescript+glimmer");
        assert_eq!(content_type("a/b/util.ts"), "text/typescript");
        assert_eq!(content_type("logo.PNG"), "image/png");
        assert_eq!(content_type("notes.txt"), "text/plain");
        assert_eq!(content_type("Person/1.json"), "application/json");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(content_type("dir.d/LICENSE"), "application/octet-stream", "only the last segment counts");
        assert_eq!(text_content_type("notes.md"), "text/markdown; charset=utf-8");
        assert_eq!(text_content_type("person.gts"), "text/typescript+glimmer; charset=utf-8");
        assert_eq!(text_content_type("logo.png"), "image/png");
        assert!(has_executable_extension("x/person.gts") && !has_executable_extension("hello.test"));
        assert_eq!(file_def("notes.txt"), ("https://cardstack.com/base/text-file-def".to_string(), "TextFileDef"));
        assert_eq!(file_def("data.bin"), ("https://cardstack.com/base/file-api".to_string(), "FileDef"));
    }
}
