//! Pictures drawn on the server as inline SVG: the overview's bar chart of the last hour, and a
//! group's dependency graph laid out in layers by dependency depth. No script draws them, so
//! they show with scripts off too.

use std::collections::HashMap;

use maud::{Markup, html};

/// One node of a dependency graph: its id, what it shows, its state's name, and the ids it
/// depends on (ids not among the nodes are left out).
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub label: String,
    pub state: &'static str,
    pub depends_on: Vec<String>,
    pub href: String,
}

/// Where each node goes: `layers[d]` lists the nodes (by index) of depth `d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub depth: Vec<usize>,
    pub layers: Vec<Vec<usize>>,
}

/// Depth 0 for a node with no dependency among `nodes`, else one more than its deepest
/// dependency's. Submission order keeps dependencies before their dependents, but the layout
/// does not rely on it: a cycle (which the store never makes) is cut where it is found.
pub fn layout(nodes: &[Node]) -> Layout {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    // 0: not seen, 1: on the path being walked, 2: done.
    let mut mark = vec![0u8; nodes.len()];
    let mut depth = vec![0usize; nodes.len()];
    for start in 0..nodes.len() {
        if mark[start] != 0 {
            continue;
        }
        // An explicit stack (graphs can be deep): (node, next dependency to look at).
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            top.1 += 1;
            if let Some(dep) = nodes[node].depends_on.get(next) {
                if let Some(&d) = index.get(dep.as_str()) {
                    match mark[d] {
                        0 => {
                            mark[d] = 1;
                            stack.push((d, 0));
                        }
                        2 => depth[node] = depth[node].max(depth[d] + 1),
                        _ => {} // a cycle: this edge does not count
                    }
                }
            } else {
                mark[node] = 2;
                stack.pop();
                if let Some(&(parent, _)) = stack.last() {
                    depth[parent] = depth[parent].max(depth[node] + 1);
                }
            }
        }
    }
    let mut layers = vec![Vec::new(); depth.iter().max().map_or(0, |d| d + 1)];
    for (i, d) in depth.iter().enumerate() {
        layers[*d].push(i);
    }
    Layout { depth, layers }
}

/// The fill of a state's name (`queued`, `failed`, …), the same everywhere in the console.
pub fn state_colour(state: &str) -> &'static str {
    match state {
        "queued" => "#9aa5b1",
        "running" => "#3b82f6",
        "succeeded" => "#22a55b",
        "failed" => "#dc2626",
        "cancelled" => "#6b7280",
        "deadline_exceeded" => "#f59e0b",
        _ => "#cccccc",
    }
}

const STATES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "deadline_exceeded",
];

const NODE_W: usize = 150;
const NODE_H: usize = 30;
const GAP_X: usize = 50;
const GAP_Y: usize = 14;

/// The graph as SVG: layers left to right, an edge from each dependency to its dependent, each
/// node a link to its job, coloured by state, with a legend below.
pub fn graph(nodes: &[Node]) -> Markup {
    let Layout { layers, .. } = layout(nodes);
    let mut at = vec![(0usize, 0usize); nodes.len()];
    for (d, layer) in layers.iter().enumerate() {
        for (row, &i) in layer.iter().enumerate() {
            at[i] = (10 + d * (NODE_W + GAP_X), 10 + row * (NODE_H + GAP_Y));
        }
    }
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let rows = layers.iter().map(Vec::len).max().unwrap_or(0);
    // Wide enough for the legend too.
    let width = (10 + layers.len() * (NODE_W + GAP_X)).max(20 + STATES.len() * 120 + 40);
    let legend_y = 20 + rows * (NODE_H + GAP_Y);
    let height = legend_y + 30;
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={"0 0 " (width) " " (height)} role="img" aria-label="dependency graph" {
            g.edges stroke="#555" stroke-width="1.2" {
                @for (i, node) in nodes.iter().enumerate() {
                    @for dep in &node.depends_on {
                        @if let Some(&d) = index.get(dep.as_str()) {
                            line x1=(at[d].0 + NODE_W) y1=(at[d].1 + NODE_H / 2)
                                x2=(at[i].0) y2=(at[i].1 + NODE_H / 2) {}
                        }
                    }
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                a href=(node.href) {
                    g.node data-job=(node.id) data-state=(node.state) {
                        title { (node.label) " (" (node.state) ")" }
                        rect x=(at[i].0) y=(at[i].1) width=(NODE_W) height=(NODE_H) rx="5"
                            fill=(state_colour(node.state)) {}
                        text x=(at[i].0 + 8) y=(at[i].1 + 19) fill="#fff" font-size="12" {
                            (short(&node.label, 20))
                        }
                    }
                }
            }
            g.legend font-size="12" {
                @for (n, state) in STATES.iter().enumerate() {
                    rect x=(10 + n * 120) y=(legend_y) width="12" height="12"
                        fill=(state_colour(state)) {}
                    text x=(26 + n * 120) y=(legend_y + 11) { (state) }
                }
            }
        }
    }
}

/// At most `n` characters of `text`, with an ellipsis when cut.
pub fn short(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// One minute's bar: how many jobs ended well and badly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bar {
    pub succeeded: u64,
    /// Failed or past their deadline.
    pub failed: u64,
    pub cancelled: u64,
}

/// The last hour as bars, one a minute, oldest first: succeeded below, failed above it,
/// cancelled on top.
pub fn chart(bars: &[Bar]) -> Markup {
    const W: usize = 8;
    const H: u64 = 120;
    let max = bars
        .iter()
        .map(|b| b.succeeded + b.failed + b.cancelled)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| (n * H).div_ceil(max);
    let width = 40 + bars.len() * (W + 2);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(width) height=(H + 40)
            viewBox={"0 0 " (width) " " (H + 40)} role="img"
            aria-label="jobs ended per minute over the last hour" {
            text x="0" y="12" font-size="11" { (max) }
            text x="0" y=(H + 10) font-size="11" { "0" }
            line x1="34" y1=(H + 10) x2=(width) y2=(H + 10) stroke="#999" {}
            @for (n, bar) in bars.iter().enumerate() {
                @let x = 36 + n * (W + 2);
                @let ok = scale(bar.succeeded);
                @let bad = scale(bar.failed);
                @let off = scale(bar.cancelled);
                g.bar data-succeeded=(bar.succeeded) data-failed=(bar.failed) {
                    title {
                        (bars.len() - n) " min ago: " (bar.succeeded) " succeeded, "
                        (bar.failed) " failed, " (bar.cancelled) " cancelled"
                    }
                    @if bar.succeeded > 0 {
                        rect x=(x) y=(H + 10 - ok) width=(W) height=(ok)
                            fill=(state_colour("succeeded")) {}
                    }
                    @if bar.failed > 0 {
                        rect x=(x) y=(H + 10 - ok - bad) width=(W) height=(bad)
                            fill=(state_colour("failed")) {}
                    }
                    @if bar.cancelled > 0 {
                        rect x=(x) y=(H + 10 - ok - bad - off) width=(W) height=(off)
                            fill=(state_colour("cancelled")) {}
                    }
                }
            }
            text x="36" y=(H + 28) font-size="11" { "-60 min" }
            text x=(width - 30) y=(H + 28) font-size="11" { "now" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, deps: &[&str]) -> Node {
        Node {
            id: id.into(),
            label: id.into(),
            state: "queued",
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            href: format!("/jobs/{id}"),
        }
    }

    #[test]
    fn layers_follow_the_longest_dependency_path() {
        // a → b → d, a → c, and d also on c; e stands alone; x is outside the group.
        let nodes = [
            node("d", &["b", "c"]),
            node("a", &[]),
            node("b", &["a"]),
            node("c", &["a", "x"]),
            node("e", &[]),
        ];
        let layout = layout(&nodes);
        assert_eq!(layout.depth, [2, 0, 1, 1, 0]);
        assert_eq!(layout.layers, [vec![1, 4], vec![2, 3], vec![0]]);
    }

    #[test]
    fn a_cycle_does_not_loop() {
        let nodes = [node("a", &["b"]), node("b", &["a"])];
        let layout = layout(&nodes);
        assert_eq!(layout.layers.iter().map(Vec::len).sum::<usize>(), 2);
        assert!(super::layout(&[]).layers.is_empty());
    }

    #[test]
    fn the_graph_draws_every_node_and_edge_and_escapes_labels() {
        let mut nodes = [node("a", &[]), node("b", &["a"])];
        nodes[1].label = "<script>x</script>".into();
        nodes[1].state = "failed";
        let svg = graph(&nodes).into_string();
        assert_eq!(svg.matches("<line ").count(), 1, "{svg}");
        assert_eq!(svg.matches("data-job=").count(), 2);
        assert!(svg.contains(state_colour("failed")));
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(
            svg.contains("deadline_exceeded"),
            "the legend names every state"
        );
    }

    #[test]
    fn the_chart_has_a_bar_a_minute() {
        let mut bars = vec![Bar::default(); 60];
        bars[59] = Bar {
            succeeded: 3,
            failed: 1,
            cancelled: 0,
        };
        let svg = chart(&bars).into_string();
        assert_eq!(svg.matches("<g class=\"bar\"").count(), 60, "{svg}");
        assert!(svg.contains("data-succeeded=\"3\" data-failed=\"1\""));
    }
}
