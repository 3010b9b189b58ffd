# A flake that builds a project from its srcstore snapshot without copying the project.
#
# A flake's own directory is copied into the store at every evaluation, and in a git repository
# that means the whole repository. So keep this flake in a directory of its own and refer to it
# with `path:`, which copies only this directory, and take the project's source from srcstore
# through the environment (hence --impure):
#
#   SRCSTORE_SRC=$(srcstore path) nix build --impure path:./examples/flake
#   srcstore watch -- nix build --impure path:./examples/flake      # sets SRCSTORE_SRC itself
#
# Without SRCSTORE_SRC the build fails with a message rather than silently copying the project.
{
  description = "Build from a srcstore snapshot, with no copy of the source tree";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      # What nix/default.nix does, inline: this directory is all the flake can see.
      fromEnv = builtins.getEnv "SRCSTORE_SRC";
      src = if fromEnv != "" then fromEnv
            else throw "set SRCSTORE_SRC (`srcstore path`) and pass --impure";
    in {
      packages.${system}.default = derivation {
        name = "from-snapshot";
        inherit system src;
        builder = "${pkgs.busybox}/bin/sh";
        PATH = "${pkgs.busybox}/bin";
        args = [ "-c" "cd /srcstore/src && find . -type f | sort > $out" ];
      };
    };
}
