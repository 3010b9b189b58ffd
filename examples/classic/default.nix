# A classic (non-flake) expression that builds from the srcstore snapshot when given one:
#
#   srcstore mount --allow-other &                     # in the project
#   nix-build examples/classic --argstr src "$(srcstore path)"
#   srcstore watch -- nix-build examples/classic --argstr src {}
#
# Without `src`, it falls back to copying the project into the store, as plain Nix would.
{ pkgs ? import <nixpkgs> { }, src ? null }:
pkgs.stdenv.mkDerivation {
  name = "hello-from-snapshot";
  src = import ../../nix { inherit src; fallback = ../..; };
  # The same snapshot also appears at /srcstore/src in the sandbox: build there so compilers
  # that hash absolute paths (Go without -trimpath, ccache with -g) hit their caches.
  buildPhase = "cd /srcstore/src 2>/dev/null || true; ls > listing";
  installPhase = "mkdir -p $out && cp listing $out/";
}
