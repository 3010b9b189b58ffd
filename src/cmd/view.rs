//! The engine's live snapshots as a FUSE [`Source`].

use std::sync::Arc;

use srcstore::live::Live;
use srcstore::tree::Node;
use srcstore_fuse::{Kind, Root, Source, Unproven};

pub struct LiveView(pub Arc<Live>);

impl Source for LiveView {
    type Node = Node;

    fn roots(&self) -> Vec<Root<Node>> {
        self.0
            .served()
            .into_iter()
            .map(|s| Root {
                name: s.basename().into_bytes(),
                node: s.tree().clone(),
                path: s.prefix().to_vec(),
            })
            .collect()
    }

    fn id(&self, node: &Node) -> u64 {
        node.id().0
    }

    fn kind(&self, node: &Node) -> Kind {
        match node {
            Node::Dir(_) => Kind::Dir,
            Node::File(f) => Kind::File {
                size: f.size(),
                executable: f.executable(),
            },
            Node::Symlink(s) => Kind::Symlink {
                len: s.target.len() as u64,
            },
        }
    }

    fn child(&self, dir: &Node, name: &[u8]) -> Option<Node> {
        match dir {
            Node::Dir(d) => d.get(name).cloned(),
            _ => None,
        }
    }

    fn list(&self, dir: &Node, from: usize, add: &mut dyn FnMut(&[u8], &Node) -> bool) {
        if let Node::Dir(d) = dir {
            for e in d.entries.iter().skip(from) {
                if !add(&e.name, &e.node) {
                    break;
                }
            }
        }
    }

    fn read_link(&self, node: &Node) -> Vec<u8> {
        match node {
            Node::Symlink(s) => s.target.to_vec(),
            _ => Vec::new(),
        }
    }

    fn read(&self, node: &Node, path: &[u8], offset: u64, size: u32) -> Result<Vec<u8>, Unproven> {
        match node {
            Node::File(f) => self.0.read(path, f, offset, size).map_err(|_| Unproven),
            _ => Err(Unproven),
        }
    }
}
