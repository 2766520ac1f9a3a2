//! `herald lineage`: what one event caused, drawn as a tree
//! (`GET /v1/lineage`).

use clap::{ArgGroup, Args};
use serde_json::Value;

use super::{Api, Error, Output, cell, emit, print_json};

/// Where the tree starts.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").required(true).args(["correlationid", "causationid", "topic"])))]
pub struct LineageArgs {
    /// Every event with this correlation id, and what they caused
    #[arg(long)]
    correlationid: Option<String>,
    /// Everything the event of this id caused
    #[arg(long)]
    causationid: Option<String>,
    /// The topic of the event to start from (with --offset)
    #[arg(long, requires = "offset")]
    topic: Option<String>,
    /// Its partition
    #[arg(long, default_value_t = 0, requires = "topic")]
    partition: u32,
    /// Its offset
    #[arg(long, requires = "topic")]
    offset: Option<u64>,
}

pub(crate) async fn run(api: &Api, args: LineageArgs) -> Result<(), Error> {
    let query = match (&args.correlationid, &args.causationid, &args.topic) {
        (Some(correlation), _, _) => format!("correlationid={}", Api::segment(correlation)),
        (_, Some(cause), _) => format!("causationid={}", Api::segment(cause)),
        (_, _, Some(topic)) => format!(
            "topic={}&partition={}&offset={}",
            Api::segment(topic),
            args.partition,
            args.offset.unwrap_or(0)
        ),
        _ => {
            return Err(Error::Usage(
                "give --correlationid, --causationid or --topic".into(),
            ));
        }
    };
    let answer = api.get(&format!("/v1/lineage?{query}")).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let nodes = answer["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.is_empty() {
        emit("Nothing found.");
    }
    for line in draw(&nodes) {
        emit(&line);
    }
    if answer["truncated"] == true {
        emit("… (cut short: too many nodes)");
    }
    Ok(())
}

/// One line per node, in the answer's order (each after its parent),
/// with box-drawing connectors from its depth.
fn draw(nodes: &[Value]) -> Vec<String> {
    let depth = |index: usize| {
        nodes
            .get(index)
            .and_then(|node| node["depth"].as_u64())
            .unwrap_or(0) as usize
    };
    // Whether a later node sits at `depth` before one shallower: the
    // column of that depth goes on below.
    let continues = |index: usize, level: usize| {
        for later in index + 1..nodes.len() {
            let d = depth(later);
            if d < level {
                return false;
            }
            if d == level {
                return true;
            }
        }
        false
    };
    let mut lines = Vec::with_capacity(nodes.len());
    for (index, node) in nodes.iter().enumerate() {
        let level = depth(index);
        let mut prefix = String::new();
        for column in 1..level {
            prefix.push_str(if continues(index, column) {
                "│  "
            } else {
                "   "
            });
        }
        if level > 0 {
            prefix.push_str(if continues(index, level) {
                "├─ "
            } else {
                "└─ "
            });
        }
        lines.push(format!("{prefix}{}", describe(node)));
    }
    lines
}

/// `kind id` and what matters of it.
fn describe(node: &Value) -> String {
    let kind = cell(node.get("kind"));
    let id = cell(node.get("id"));
    let detail = match kind.as_str() {
        "event" => format!(
            "{} {}/{}/{}",
            cell(node.get("type")),
            cell(node.get("topic")),
            cell(node.get("partition")),
            cell(node.get("offset"))
        ),
        "delivery" => format!("{} {}", cell(node.get("group")), cell(node.get("state"))),
        "job" | "workflow_step" => cell(node.get("status")),
        "webhook_attempt" => format!(
            "{} {} {}",
            cell(node.get("endpoint")),
            cell(node.get("status_code")),
            if node["succeeded"] == true {
                "succeeded"
            } else {
                "failed"
            }
        ),
        _ => String::new(),
    };
    let at = node
        .get("at")
        .map(|at| format!("  {}", cell(Some(at))))
        .unwrap_or_default();
    format!("{kind} {id}  {detail}{at}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn given_a_tree_should_draw_connectors_by_depth() {
        let nodes = [
            json!({"kind": "event", "id": "a", "depth": 0}),
            json!({"kind": "event", "id": "b", "depth": 1}),
            json!({"kind": "job", "id": "j", "depth": 2}),
            json!({"kind": "event", "id": "c", "depth": 1}),
        ];
        let lines = draw(&nodes);
        assert!(lines[0].starts_with("event a"));
        assert!(lines[1].starts_with("├─ event b"), "{lines:?}");
        assert!(lines[2].starts_with("│  └─ job j"), "{lines:?}");
        assert!(lines[3].starts_with("└─ event c"), "{lines:?}");
    }
}
