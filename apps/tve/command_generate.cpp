// tve generate (hidden): the bash completion script and the man page, written from the same CLI11
// option tables the --help text comes from, so that neither can drift from the options; and the
// bundle names the completion offers after --model. The build runs it (CMakeLists.txt) and the
// package installs what it wrote.

#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "tve/atomic_file.hpp"
#include "tve/model_paths.hpp"
#include "tve/version.hpp"

namespace tve::cli {
namespace {

struct GenerateCliOptions {
  std::string what;
  std::optional<std::string> out;  // a file, written whole (the build's), else stdout
};

bool hidden(const CLI::App* command) { return command->get_group().empty(); }

std::vector<const CLI::App*> visible_commands(const CLI::App& tve) {
  return tve.get_subcommands([](const CLI::App* command) { return !hidden(command); });
}

std::vector<std::string> option_names(const CLI::Option* option) {
  std::vector<std::string> names;
  for (const auto& name : option->get_snames()) names.push_back("-" + name);
  for (const auto& name : option->get_lnames()) names.push_back("--" + name);  // --no-smooth included
  return names;
}

bool takes_value(const CLI::Option* option) { return option->get_expected_max() != 0; }  // flags expect none

// The choices of an option checked with CLI::IsMember: CLI11 writes them into the type name, as in
// "TEXT:{cpu,cuda,auto}" (what --help shows). Empty for any other option.
std::vector<std::string> choices(const CLI::Option* option) {
  const std::string type = option->get_type_name();
  const auto open = type.find('{');
  const auto close = type.find('}', open);
  std::vector<std::string> out;
  if (open == std::string::npos || close == std::string::npos) return out;
  std::stringstream list(type.substr(open + 1, close - open - 1));
  for (std::string item; std::getline(list, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool names_a_bundle(const CLI::Option* option) {
  for (const auto& name : option->get_lnames()) {
    if (name == "model") return true;
  }
  return false;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

// Single-quoted for bash: the words are option names and choices, but a quote must not end the script.
std::string shell_quoted(const std::string& text) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string bash_completion(const CLI::App& tve) {
  const auto commands = visible_commands(tve);
  std::vector<std::string> command_names;
  for (const auto* command : commands) command_names.push_back(command->get_name());
  std::vector<std::string> top_options;
  for (const auto* option : tve.get_options()) {
    for (const auto& name : option_names(option)) top_options.push_back(name);
  }

  std::ostringstream out;
  out << "# bash completion for tve " << kVersion << ", written by `tve generate bash-completion` from tve's own\n"
      << "# option tables (the ones --help prints). Completes commands, options, option values with a fixed\n"
      << "# set of choices, bundle names after --model (`tve generate bundle-names`, honouring --models-dir)\n"
      << "# and file names elsewhere. Needs no bash-completion package.\n"
      << "_tve() {\n"
      << "  local cur=${COMP_WORDS[COMP_CWORD]} prev=\"\" command=\"\" models_dir=\"\" i\n"
      << "  ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}\n"
      << "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      << "    case ${COMP_WORDS[i]} in\n"
      << "      " << join(command_names, "|") << ") [[ -z $command ]] && command=${COMP_WORDS[i]} ;;\n"
      << "      --models-dir) models_dir=${COMP_WORDS[i+1]} ;;\n"
      << "    esac\n"
      << "  done\n"
      << "  COMPREPLY=()\n"
      << "  if [[ -z $command ]]; then\n"
      << "    COMPREPLY=($(compgen -W " << shell_quoted(join(command_names, " ") + " " + join(top_options, " "))
      << " -- \"$cur\"))\n"
      << "    return 0\n"
      << "  fi\n"
      << "  case $command:$prev in\n";
  for (const auto* command : commands) {
    std::vector<std::string> bundle_options, file_options;
    for (const auto* option : command->get_options()) {
      if (option->get_positional() || !takes_value(option)) continue;
      const auto names = option_names(option);
      const auto values = choices(option);
      if (!values.empty()) {
        out << "    " << command->get_name() << ":" << join(names, "|" + command->get_name() + ":") << ")\n"
            << "      COMPREPLY=($(compgen -W " << shell_quoted(join(values, " ")) << " -- \"$cur\")); return 0 ;;\n";
      } else if (names_a_bundle(option)) {
        for (const auto& name : names) bundle_options.push_back(command->get_name() + ":" + name);
      } else {
        for (const auto& name : names) file_options.push_back(command->get_name() + ":" + name);
      }
    }
    if (!bundle_options.empty()) {
      // The names tve itself would find, from the same folders; a folder path completes as a file too.
      out << "    " << join(bundle_options, "|") << ")\n"
          << "      COMPREPLY=($(compgen -W \"$(\"${COMP_WORDS[0]}\" generate bundle-names ${models_dir:+--models-dir "
             "\"$models_dir\"} 2>/dev/null)\" -- \"$cur\") $(compgen -d -- \"$cur\")); return 0 ;;\n";
    }
    if (!file_options.empty()) {
      out << "    " << join(file_options, "|") << ")\n"
          << "      COMPREPLY=($(compgen -f -- \"$cur\")); return 0 ;;\n";
    }
  }
  out << "  esac\n"
      << "  if [[ $cur == -* ]]; then\n"
      << "    case $command in\n";
  for (const auto* command : commands) {
    std::vector<std::string> names;
    for (const auto* option : command->get_options()) {
      if (option->get_positional()) continue;
      for (const auto& name : option_names(option)) names.push_back(name);
    }
    out << "      " << command->get_name() << ") COMPREPLY=($(compgen -W " << shell_quoted(join(names, " "))
        << " -- \"$cur\")) ;;\n";
  }
  out << "    esac\n"
      << "    return 0\n"
      << "  fi\n"
      << "  COMPREPLY=($(compgen -f -- \"$cur\"))  # inputs: images and folders\n"
      << "}\n"
      << "complete -o filenames -F _tve tve\n";
  return out.str();
}

// Text for roff: backslashes and minus signs escaped, non-ASCII characters as \[uXXXX] (groff reads
// its input as Latin-1 otherwise), and a line never starting with a control character.
std::string roff(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
      unsigned codepoint = c & (0x3F >> extra);
      for (int k = 0; k < extra && i + 1 < text.size(); ++k) codepoint = (codepoint << 6) | (text[++i] & 0x3F);
      char escaped[16];
      std::snprintf(escaped, sizeof escaped, "\\[u%04X]", codepoint);
      out += escaped;
    }
  }
  return out;
}

std::string roff_line(const std::string& line) {
  size_t start = line.find_first_not_of(' ');
  const std::string text = roff(start == std::string::npos ? "" : line.substr(start));
  return (!text.empty() && (text[0] == '.' || text[0] == '\'')) ? "\\&" + text : text;
}

// A help text of several lines (the --method choices, one a line) as lines broken where it breaks.
void roff_paragraph(std::ostringstream& out, const std::string& text) {
  std::stringstream lines(text);
  bool first = true;
  for (std::string line; std::getline(lines, line);) {
    if (!first) out << ".br\n";
    out << roff_line(line) << "\n";
    first = false;
  }
}

void roff_options(std::ostringstream& out, const std::vector<const CLI::Option*>& options) {
  for (const auto* option : options) {
    out << ".TP\n";
    if (option->get_positional()) {
      out << "\\fI" << roff(option->get_name(true)) << "\\fR";
    } else {
      const auto names = option_names(option);
      for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << "\\fB" << roff(names[i]) << "\\fR";
      if (takes_value(option)) out << " \\fI" << roff(option->get_type_name()) << "\\fR";
    }
    out << "\n";
    std::string help = option->get_description();
    if (!option->get_default_str().empty()) help += " (default: " + option->get_default_str() + ")";
    if (option->get_required()) help += " (required)";
    roff_paragraph(out, help);
  }
}

// The man page: the commands and their options as --help lists them, then the footer's paragraphs
// (examples, exit codes, where models are looked up), each under its own heading.
std::string man_page(const CLI::App& tve) {
  std::ostringstream out;
  out << ".\\\" Written by `tve generate man` from tve's option tables; edit the options, not this file.\n"
      << ".TH TVE 1 \"\" \"tve " << kVersion << "\" \"User Commands\"\n"
      << ".SH NAME\n"
      << "tve \\- " << roff(tve.get_description().substr(tve.get_description().find(':') + 2)) << "\n"
      << ".SH SYNOPSIS\n"
      << ".B tve\n"
      << "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIINPUTS\\fR...]\n"
      << ".br\n"
      << ".B tve\n"
      << "\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR\n"
      << ".SH DESCRIPTION\n"
      << roff_line(tve.get_description()) << "\n"
      << ".PP\n"
      << "Results go to stdout as JSON lines, diagnostics to stderr. Each command's own help: "
         "\\fBtve\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR.\n"
      << ".SH OPTIONS\n";
  roff_options(out, tve.get_options());
  out << ".SH COMMANDS\n";
  for (const auto* command : visible_commands(tve)) {
    out << ".SS \"tve " << roff(command->get_name()) << "\"\n";
    roff_paragraph(out, command->get_description());
    roff_options(out, command->get_options());
  }
  std::stringstream footer(tve.get_footer());
  std::vector<std::vector<std::string>> paragraphs(1);
  for (std::string line; std::getline(footer, line);) {
    if (line.empty()) {
      if (!paragraphs.back().empty()) paragraphs.emplace_back();
    } else {
      paragraphs.back().push_back(line);
    }
  }
  for (const auto& paragraph : paragraphs) {
    if (paragraph.empty()) continue;
    // "Examples:" on a line of its own heads a block kept as it is; "Exit codes: ..." heads text.
    const std::string& first = paragraph.front();
    const auto colon = first.find(':');
    std::string heading = colon == std::string::npos ? "NOTES" : first.substr(0, colon);
    for (auto& c : heading) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    out << ".SH \"" << roff(heading) << "\"\n";
    const bool verbatim = colon != std::string::npos && colon + 1 == first.size();
    if (verbatim) {
      out << ".nf\n";
      for (size_t i = 1; i < paragraph.size(); ++i) out << roff_line(paragraph[i]) << "\n";
      out << ".fi\n";
    } else {
      for (size_t i = 0; i < paragraph.size(); ++i) {
        out << roff_line(i == 0 && colon != std::string::npos ? first.substr(colon + 1) : paragraph[i]) << "\n";
      }
    }
  }
  out << ".SH ENVIRONMENT\n"
      << ".TP\n\\fB" << roff(kModelsDirEnv) << "\\fR\n"
      << "A folder of model bundles, searched after \\fB\\-\\-models\\-dir\\fR.\n"
      << ".TP\n\\fBOPENBLAS_CORETYPE\\fR\n"
      << "OpenBLAS kernels to use; when unset, tve picks the ones the CPU runs (restarting once).\n"
      << ".SH FILES\n"
      << ".TP\n\\fI<prefix>/share/tve/models\\fR\n"
      << "The shipped model bundles, found from the executable's location (\\fI<prefix>/bin/tve\\fR); "
         "\\fIDEFAULT\\fR names the default model.\n"
      << ".TP\n\\fI<prefix>/share/doc/tve\\fR\n"
      << "README.md and the documents it links to.\n";
  return out.str();
}

int run(const CLI::App& tve, const CommonOptions& common, const GenerateCliOptions& options) {
  std::string text;
  if (options.what == "bash-completion") {
    text = bash_completion(tve);
  } else if (options.what == "man") {
    text = man_page(tve);
  } else {  // bundle-names: the bundles tve would find, one a line, each once
    std::set<std::string> names;
    for (const auto& listing : list_bundles(model_search_dirs(as_path(common.models_dir)))) {
      names.insert(listing.dir.filename().string());
    }
    for (const auto& name : names) text += name + "\n";
  }
  if (options.out) {
    write_file_atomically(*options.out, text);
  } else if (std::fputs(text.c_str(), stdout) < 0) {
    throw OutputError("stdout: cannot write the " + options.what);
  }
  return kSuccess;
}

}  // namespace

Command add_generate_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<GenerateCliOptions>();
  // Hidden (no group): a tool for the build and the completion script, not for users.
  auto* command = tve.add_subcommand("generate", "Write tve's bash completion script, its man page, or the bundle names");
  command->group("");
  command->add_option("what", options->what, "bash-completion, man or bundle-names")
      ->required()
      ->check(CLI::IsMember({"bash-completion", "man", "bundle-names"}));
  command->add_option("-o,--out", options->out, "Write to this file (whole or not at all) instead of stdout");
  command->add_option("--models-dir", common.models_dir, "Folder of model bundles searched first (bundle-names)");
  const CLI::App* app = &tve;
  return {command, [app, &common, options] { return run(*app, common, *options); }, /*runs_models=*/false};
}

}  // namespace tve::cli
