//! `hvctl image import|list|get|delete`, with the import's progress on a terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::{EXIT_USAGE, answer};
use crate::cli::{ImageCommand, Output};
use crate::render;

type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;

pub async fn run(
    output: Output,
    agent: &str,
    images: &mut Images,
    command: ImageCommand,
) -> ExitCode {
    match command {
        ImageCommand::Import {
            source,
            name,
            sha256,
            properties,
        } => {
            let Some(props) = parse_properties(properties) else {
                return ExitCode::from(EXIT_USAGE);
            };
            let url = source.starts_with("http://") || source.starts_with("https://");
            let req = pb::ImportImageRequest {
                name: name.clone(),
                source_path: if url {
                    String::new()
                } else {
                    let path = PathBuf::from(&source);
                    std::path::absolute(&path)
                        .unwrap_or(path)
                        .display()
                        .to_string()
                },
                source_url: if url { source } else { String::new() },
                sha256: sha256.unwrap_or_default(),
                properties: props,
            };
            let result = with_progress(images, name, images.clone().import(req)).await;
            answer(output, agent, result, |i: &pb::Image| {
                render::images(std::slice::from_ref(i))
            })
        }
        ImageCommand::List => answer(
            output,
            agent,
            images.list(pb::ListImagesRequest {}).await,
            |l: &pb::ListImagesResponse| render::images(&l.images),
        ),
        ImageCommand::Get { name } => answer(
            output,
            agent,
            images.get(pb::GetImageRequest { name }).await,
            |i: &pb::Image| render::images(std::slice::from_ref(i)),
        ),
        ImageCommand::Delete { name } => answer(
            output,
            agent,
            images.delete(pb::DeleteImageRequest { name }).await,
            |_: &pb::DeleteImageResponse| "deleted\n".into(),
        ),
    }
}

/// `--property KEY=VALUE` arguments as a map; `None` (said on stderr) when one has no `=`.
pub fn parse_properties(
    properties: Vec<String>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut props = std::collections::BTreeMap::new();
    for p in properties {
        let Some((k, v)) = p.split_once('=') else {
            eprintln!("hvctl: --property {p:?}: expected KEY=VALUE");
            return None;
        };
        props.insert(k.to_string(), v.to_string());
    }
    Some(props)
}

/// Runs `import`, showing the image's progress on stderr meanwhile when stderr is a terminal.
async fn with_progress<T>(
    images: &mut Images,
    name: String,
    import: impl std::future::Future<Output = T>,
) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return import.await;
    }
    let show = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(i) = images.get(pb::GetImageRequest { name: name.clone() }).await
                && i.get_ref().state == "importing"
            {
                eprint!(
                    "\r\x1b[Kimporting {name}: {}",
                    render::progress(i.get_ref())
                );
            }
        }
    };
    let result = tokio::select! {
        r = import => r,
        () = show => unreachable!("the progress loop never ends"),
    };
    eprint!("\r\x1b[K");
    result
}
