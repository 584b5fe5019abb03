#include "tve/model_paths.hpp"

#include <cstdlib>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

TEST(ModelPaths, OptionComesFirstThenTheShippedFolder) {
  TempDir tmp;
  const auto dirs = model_search_dirs(tmp.path());
  ASSERT_GE(dirs.size(), 2u);
  EXPECT_EQ(dirs.front(), fs::weakly_canonical(tmp.path()));
  EXPECT_EQ(dirs.back(), fs::weakly_canonical(TVE_TEST_MODELS_DIR));
}

TEST(ModelPaths, EnvironmentVariableComesAfterTheOption) {
  TempDir option, env;
  ::setenv(kModelsDirEnv, env.path().c_str(), 1);
  const auto dirs = model_search_dirs(option.path());
  ::unsetenv(kModelsDirEnv);
  ASSERT_GE(dirs.size(), 3u);
  EXPECT_EQ(dirs[0], fs::weakly_canonical(option.path()));
  EXPECT_EQ(dirs[1], fs::weakly_canonical(env.path()));
}

TEST(ModelPaths, AModelsDirThatIsNotAFolderIsRefused) {
  TempDir tmp;
  test::expect_error<InvalidArgument>([&] { model_search_dirs(tmp / "absent"); }, {"--models-dir", "absent", "does not exist"});
  test::write_text(tmp / "file", "x");
  test::expect_error<InvalidArgument>([&] { model_search_dirs(tmp / "file"); }, {"--models-dir", "not a folder"});
  test::expect_error<InvalidArgument>([&] { model_search_dirs(fs::path()); }, {"--models-dir is empty"});
}

TEST(ModelPaths, NameFoundInTheFirstFolderThatHasIt) {
  TempDir tmp;
  test::copy_bundle("tiny-vit", tmp.path());
  const auto dirs = model_search_dirs(tmp.path());
  EXPECT_EQ(resolve_bundle("tiny-vit", dirs), dirs.front() / "tiny-vit");
  EXPECT_EQ(resolve_bundle("tiny-swin", dirs), fs::weakly_canonical(TVE_TEST_MODELS_DIR) / "tiny-swin");
  const auto listings = list_bundles(dirs);
  int shadowed = 0;
  for (const auto& listing : listings) shadowed += listing.shadowed;
  EXPECT_EQ(shadowed, 1);
}

TEST(ModelPaths, PathIsTakenAsIs) {
  const auto path = test::shipped_bundle("tiny-resnet");
  EXPECT_EQ(resolve_bundle(path.string(), {}), path);
  test::expect_error<BundleError>([] { resolve_bundle("./no/such/bundle", {}); }, {"no/such/bundle", "does not exist"});
}

// This test binary lies in the build folder and no share/tve/models is beside it: it reads the
// source tree's models/. (An installed binary: tests/cli/package_test.sh, on the real package.)
TEST(ModelPaths, ABinaryInTheBuildFolderReadsTheSourceTreesModels) {
  EXPECT_EQ(fs::weakly_canonical(shipped_models_dir()), fs::weakly_canonical(TVE_TEST_MODELS_DIR));
  const auto dirs = model_search_dirs(std::nullopt);
  ASSERT_FALSE(dirs.empty());
  EXPECT_EQ(dirs.back(), fs::weakly_canonical(TVE_TEST_MODELS_DIR));
}

TEST(ModelPaths, UnknownNameListsWhatIsAvailable) {
  const auto dirs = model_search_dirs(std::nullopt);
  test::expect_error<BundleError>([&] { resolve_bundle("nope", dirs); },
                                  {"no bundle named 'nope'", "tiny-vit", "--models-dir", kModelsDirEnv});
}

TEST(ModelPaths, DefaultModelComesFromTheFirstDefaultFile) {
  TempDir a, b;
  EXPECT_EQ(default_model_name({a.path()}), "vit");
  test::write_text(b / "DEFAULT", "tiny-swin\n");
  EXPECT_EQ(default_model_name({a.path(), b.path()}), "tiny-swin");
  // The shipped models/DEFAULT names a shipped bundle.
  const auto dirs = model_search_dirs(std::nullopt);
  EXPECT_NO_THROW(resolve_bundle(default_model_name(dirs), dirs));
}

TEST(ModelPaths, InvalidBundlesAreListedWithTheirError) {
  TempDir tmp;
  test::write_text(tmp / "broken" / "manifest.json", "[]");
  const auto listings = list_bundles({tmp.path()});
  ASSERT_EQ(listings.size(), 1u);
  EXPECT_FALSE(listings[0].manifest.has_value());
  EXPECT_NE(listings[0].error.find("must be a JSON object"), std::string::npos);
}

}  // namespace
}  // namespace tve
